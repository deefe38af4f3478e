"""LoRAConfig validates itself; the recipe's peft section maps onto it."""

import pytest

from nemo_mft.config.schema import PeftSection
from nemo_mft.peft import LORA_TARGETS, LoRAConfig


def test_defaults_and_scale():
    config = LoRAConfig()
    assert config.target_modules == LORA_TARGETS and config.scale == 2.0
    assert PeftSection(method="lora", dim=8, alpha=4.0, target_modules=["linear_qkv"]).lora == LoRAConfig(
        dim=8, alpha=4.0, target_modules=("linear_qkv",))
    assert PeftSection().lora is None


@pytest.mark.parametrize("fields, message", [
    ({"dim": 0}, "dim must be an integer >= 1"), ({"alpha": 0.0}, "alpha must be > 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"), ({"target_modules": ["q_proj"]}, "target_modules .*q_proj"),
    ({"target_modules": []}, "target_modules must be a non-empty"),
])
def test_bad_values_are_refused_with_the_key(fields, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**fields)
    with pytest.raises(ValueError, match=f"peft.{message}"):
        PeftSection(method="lora", **fields)


def test_peft_needs_a_base_model():
    from nemo_mft.config.schema import CheckpointSection, DatasetSection, FinetuneConfig

    with pytest.raises(ValueError, match="peft.method=lora adapts a base model"):
        FinetuneConfig(dataset=DatasetSection(dataset_root="/d"), peft=PeftSection(method="lora"))
    assert FinetuneConfig(dataset=DatasetSection(dataset_root="/d"), peft=PeftSection(method="lora"),
                          checkpoint=CheckpointSection(pretrained_checkpoint="/m")).peft.lora.dim == 16
