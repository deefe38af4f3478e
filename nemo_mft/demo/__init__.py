"""The end-to-end demo: real offline corpora, a small pretrained GPT, then FT vs MFT on 500 domain samples.

Run it with ``make demo`` or ``python -m nemo_mft.demo`` (``--help`` for options).
"""
