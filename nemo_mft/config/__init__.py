"""Recipe configuration: the structured schema and its Hydra registration."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from nemo_mft.config.schema import FinetuneConfig

SCHEMA_NAME = "finetune_schema"


def register_schema() -> None:
    """Make the schema available to recipes as ``defaults: [finetune_schema, _self_]``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=FinetuneConfig)


def validate_config(cfg: DictConfig) -> FinetuneConfig:
    """The composed recipe as validated dataclasses; raises ValueError on an invalid value."""
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ValueError(f"invalid recipe: missing value for {err.full_key} (set it in the recipe or as "
                         f"{err.full_key}=...)") from err
    except ValueError as err:  # from a section's __post_init__
        raise ValueError(f"invalid recipe: {err}") from err
    if not isinstance(config, FinetuneConfig):
        raise ValueError(f"the recipe must start with `defaults: [{SCHEMA_NAME}, _self_]`")
    return config


__all__ = ["FinetuneConfig", "SCHEMA_NAME", "register_schema", "validate_config"]
