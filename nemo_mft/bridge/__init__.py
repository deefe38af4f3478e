"""MFT inside Megatron-Bridge's own training loop (optional: needs Megatron-Bridge 0.3.1). `recipe`: a Bridge recipe
function with a YAML file, overrides and an ``mft:`` section, then Bridge's ``finetune()``."""
