"""One finetuning run: inputs, run directory rules, checkpoints, evaluation, reporting and the loop.

The entry point is `nemo_mft.training.loop.run_finetune` (called by ``nemo-mft finetune``).
"""
