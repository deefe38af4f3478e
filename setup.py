from setuptools import find_packages, setup

setup(
    name="nemo-mft",
    version="0.1.0",
    description="Minifinetuning (MFT) for megatron-core / Megatron-Bridge: exact vocab-parallel loss, "
    "fused Triton kernel, frozen-teacher training.",
    # The recipes stay in the top-level conf/ and ship as the package nemo_mft.conf (its YAML files as
    # package data), so that an installed wheel finds them (nemo_mft.finetune.cli.default_config_dir).
    packages=[*find_packages(include=["nemo_mft", "nemo_mft.*"]), "nemo_mft.conf"],
    package_dir={"nemo_mft.conf": "conf"},
    package_data={"nemo_mft.conf": ["*.yaml", "bridge/*.yaml"]},
    python_requires=">=3.10",
    # Kept loose so the plugin installs into NGC containers (pip install --no-deps) without touching
    # their torch / megatron-core; the tested CPU pins live in requirements/.
    install_requires=["torch>=2.4"],
    entry_points={"console_scripts": ["nemo-mft = nemo_mft.finetune.cli:main"]},
    extras_require={
        "megatron": ["megatron-core>=0.16"],
        "triton": ["triton>=3.6"],
        "recipes": ["hydra-core>=1.3", "omegaconf>=2.3", "tqdm", "matplotlib", "tensorboard", "safetensors", "tokenizers"],
        # Hugging Face tokenizers' chat templates (chat rows) and checkpoints; tested with transformers 5.23.
        "hf": ["transformers>=5.0", "safetensors", "tokenizers"],
        "test": ["pytest", "nvidia-modelopt>=0.35"],
    },
)
