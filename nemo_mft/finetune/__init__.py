"""The finetuning entry point: ``nemo-mft finetune`` / ``python -m nemo_mft.finetune`` (see cli.py)."""

from nemo_mft.finetune.cli import compose_recipe, default_config_dir, finetune_main, main

__all__ = ["compose_recipe", "default_config_dir", "finetune_main", "main"]
