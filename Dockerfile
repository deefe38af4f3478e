# nemo-mft on NVIDIA's NeMo container (CUDA, PyTorch, megatron-core, TransformerEngine already inside).
#   docker build -t nemo-mft .
#   docker run --gpus all --ipc=host -v /data:/data -v /models:/models nemo-mft \
#       --config-name mft_llama3_8b dataset.dataset_root=/data/medical
# The default command runs `nemo-mft finetune` under torchrun on every GPU of the node; append Hydra
# overrides to `docker run ... nemo-mft`, or replace the command entirely.
ARG BASE_IMAGE=nvcr.io/nvidia/nemo:25.09
FROM ${BASE_IMAGE}

WORKDIR /opt/nemo-mft
COPY . /opt/nemo-mft

# --no-deps: keep the container's torch / megatron-core / triton untouched. Only the pure-Python recipe
# tools the image may lack are added (no-ops when they are already there).
RUN pip install --no-cache-dir --no-deps -e . \
 && pip install --no-cache-dir "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "tqdm" "tensorboard" "tokenizers" \
 && nemo-mft --help

ENV NEMO_MFT_CONFIG_DIR=/opt/nemo-mft/conf
ENTRYPOINT ["torchrun", "--standalone", "--nproc_per_node=gpu", "--no-python", "nemo-mft", "finetune"]
CMD ["--config-name", "mft_llama3_8b"]
