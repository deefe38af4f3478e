"""Recipe configuration: the structured schema, its Hydra registration and validation."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from nemo_mft.config.checks import check_keys, omegaconf_error_text, schema_keys, unknown_key_message
from nemo_mft.config.schema import FinetuneConfig

SCHEMA_NAME = "finetune_schema"


def register_schema() -> None:
    """Make the schema available to recipes as ``defaults: [finetune_schema, _self_]``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=FinetuneConfig)


def check_structure(cfg: DictConfig) -> None:
    """Raise ValueError unless ``cfg`` was merged onto the schema and has exactly the schema's keys."""
    if OmegaConf.get_type(cfg) is not FinetuneConfig:
        raise ValueError(f"the recipe must start with `defaults: [{SCHEMA_NAME}, _self_]`")
    check_keys(cfg)


def validate_config(cfg: DictConfig) -> FinetuneConfig:
    """The composed recipe as validated dataclasses; raises ValueError on an unknown or missing key or an
    invalid value (one line, naming the key)."""
    check_structure(cfg)
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ValueError(f"invalid recipe: missing value for {err.full_key} (set it in the recipe or as "
                         f"{err.full_key}=...)") from err
    except OmegaConfBaseException as err:  # an interpolation that does not resolve, a value of the wrong type
        raise ValueError(f"invalid recipe: {omegaconf_error_text(err)}") from err
    except ValueError as err:  # from a section's __post_init__
        raise ValueError(f"invalid recipe: {err}") from err
    return config


__all__ = ["FinetuneConfig", "SCHEMA_NAME", "register_schema", "check_structure", "validate_config",
           "schema_keys", "unknown_key_message"]
