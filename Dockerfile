# nemo-mft on NVIDIA's NeMo container (CUDA, PyTorch, megatron-core, TransformerEngine already inside).
#   docker build -t nemo-mft .
#   docker run --gpus all --ipc=host -v /data:/data -v /models:/models nemo-mft \
#       --config-name mft_llama3_8b checkpoint.pretrained_checkpoint=/models/Llama-3.1-8B-Instruct \
#       dataset.dataset_root=/data/medical
# The default command runs our own loop (`nemo-mft finetune`) under torchrun on every GPU of the node; append
# Hydra overrides to `docker run ... nemo-mft`. The Megatron-Bridge path replaces the entry point:
#   docker run --gpus all --ipc=host -v /data:/data -v /ckpt:/ckpt --entrypoint torchrun nemo-mft \
#       --standalone --nproc_per_node=gpu --no-python nemo-mft bridge \
#       --config-file conf/bridge/llama32_1b_mft.yaml checkpoint.pretrained_checkpoint=/ckpt/llama32_1b
# Multi-node (Slurm, torchrun rendezvous): examples/multinode_launch/.
ARG BASE_IMAGE=nvcr.io/nvidia/nemo:25.11
FROM ${BASE_IMAGE}

WORKDIR /opt/nemo-mft
COPY . /opt/nemo-mft

# --no-deps everywhere: keep the container's torch / megatron-core / TransformerEngine / triton untouched.
# Only the pure-Python recipe tools the image may lack are added (no-ops when they are already there).
# Megatron-Bridge: the pinned release of requirements/bridge-nodeps.txt (0.3.1, the version nemo_mft.bridge is
# written and tested against; it replaces the image's own copy) with its runtime packages nvidia-resiliency-ext and
# megatron-energon, without dependencies: its declared ones (TransformerEngine, mamba-ssm, CUDA builds) are the
# image's. Bridge 0.3.1 needs megatron-core >= 0.15, < 0.17: the build stops here, naming the version, on an image
# with another one (choose BASE_IMAGE accordingly).
RUN pip install --no-cache-dir --no-deps -e . \
 && pip install --no-cache-dir "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "tqdm" "tensorboard" "tokenizers" \
 && pip install --no-cache-dir --no-deps -r requirements/bridge-nodeps.txt \
 && python -c "import importlib.metadata as m; v = tuple(int(p) for p in m.version('megatron-core').split('.')[:2]); \
assert (0, 15) <= v < (0, 17), f'megatron-core {m.version(\"megatron-core\")} in this image; Megatron-Bridge 0.3.1 needs >=0.15,<0.17'" \
 && python -c "import transformer_engine, megatron.bridge, nemo_mft.bridge" \
 && nemo-mft --help

ENV NEMO_MFT_CONFIG_DIR=/opt/nemo-mft/conf
ENTRYPOINT ["torchrun", "--standalone", "--nproc_per_node=gpu", "--no-python", "nemo-mft", "finetune"]
CMD ["--config-name", "mft_llama3_8b"]
