# nemo-mft on NVIDIA's NeMo container (CUDA, PyTorch, megatron-core, TransformerEngine already inside).
#   docker build -t nemo-mft .
#   docker run --gpus all --ipc=host -v /data:/data -v /models:/models nemo-mft \
#       --config-name mft_llama3_8b checkpoint.pretrained_checkpoint=/models/Llama-3.1-8B-Instruct \
#       dataset.dataset_root=/data/medical
# The default command runs our own loop (`nemo-mft finetune`) under torchrun on every GPU of the node; append
# Hydra overrides to `docker run ... nemo-mft`. The Megatron-Bridge path replaces the entry point:
#   docker run --gpus all --ipc=host -v /data:/data --entrypoint torchrun nemo-mft \
#       --standalone --nproc_per_node=gpu --no-python nemo-mft bridge \
#       --recipe megatron.bridge.recipes.llama:llama32_1b_sft_config --config-file conf/bridge/llama32_1b_mft.yaml
# Multi-node (Slurm, torchrun rendezvous): examples/multinode_launch/.
ARG BASE_IMAGE=nvcr.io/nvidia/nemo:25.09
FROM ${BASE_IMAGE}

WORKDIR /opt/nemo-mft
COPY . /opt/nemo-mft

# --no-deps everywhere: keep the container's torch / megatron-core / TransformerEngine / triton untouched.
# Only the pure-Python recipe tools the image may lack are added (no-ops when they are already there).
# Megatron-Bridge: the image's own copy when it has one, else the pinned release of requirements/bridge-nodeps.txt
# (its runtime packages nvidia-resiliency-ext and megatron-energon likewise), without dependencies: its declared
# ones (TransformerEngine, mamba-ssm, CUDA builds) are the image's.
RUN pip install --no-cache-dir --no-deps -e . \
 && pip install --no-cache-dir "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "tqdm" "tensorboard" "tokenizers" \
 && (python -c "import megatron.bridge" 2>/dev/null \
     || pip install --no-cache-dir --no-deps -r requirements/bridge-nodeps.txt) \
 && python -c "import megatron.bridge, nemo_mft.bridge" \
 && nemo-mft --help

ENV NEMO_MFT_CONFIG_DIR=/opt/nemo-mft/conf
ENTRYPOINT ["torchrun", "--standalone", "--nproc_per_node=gpu", "--no-python", "nemo-mft", "finetune"]
CMD ["--config-name", "mft_llama3_8b"]
