"""``python -m nemo_mft.finetune --config-name RECIPE [overrides]`` (also under torchrun)."""

from nemo_mft.finetune.cli import finetune_main

if __name__ == "__main__":
    finetune_main()
