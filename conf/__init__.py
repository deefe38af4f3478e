"""The recipes (Hydra YAML files), installed as the package nemo_mft.conf."""
