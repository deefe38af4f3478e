"""``python -m nemo_mft COMMAND ...``: the ``nemo-mft`` console script as a module, so that launchers such as
torchrun (``-m nemo_mft finetune ...`` / ``-m nemo_mft bridge ...``) need no script on PATH."""

from nemo_mft.finetune.cli import main

if __name__ == "__main__":
    main()
