#!/usr/bin/env bash
# Start one node's share of a multi-node nemo-mft run under torchrun (one process per GPU), with a c10d
# rendezvous and the run's logs and checkpoints on shared storage. Run it once on every node (by hand, by
# ./slurm.sbatch through srun, or by any scheduler), with the same environment everywhere.
#
#   RUN_DIR=/shared/runs/exp1 NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 RDZV_ID=exp1 \
#       examples/multinode_launch/launch.sh finetune --config-name mft_llama3_8b dataset.dataset_root=/data
#   RUN_DIR=/shared/runs/exp2 ... examples/multinode_launch/launch.sh bridge \
#       --config-file conf/bridge/llama32_1b_mft.yaml checkpoint.pretrained_checkpoint=/shared/ckpt/llama32_1b
#
# finetune: our own loop (`nemo-mft finetune`); the launcher adds logger.log_dir=RUN_DIR/logs and
#   checkpoint.save = checkpoint.load = RUN_DIR/checkpoints (a restarted job resumes from its last checkpoint).
# bridge: Megatron-Bridge's finetune() with MFT (`nemo-mft bridge`); the launcher adds checkpoint.save =
#   checkpoint.load = RUN_DIR/checkpoints and logger.tensorboard_dir=RUN_DIR/tensorboard.
# Those keys are the launcher's: passing them too is an error.
#
# Environment (Slurm's variables are the defaults where one exists):
#   RUN_DIR         required: a directory every node sees (shared file system); created if missing
#   NNODES          number of nodes (default SLURM_NNODES, else 1)
#   NODE_RANK       this node's rank, 0..NNODES-1 (default SLURM_NODEID, else 0)
#   NPROC_PER_NODE  processes on this node, one per GPU (default: the GPUs nvidia-smi lists, else 1)
#   RDZV_ENDPOINT   host:port of the rendezvous, on the first node; required when NNODES > 1
#   RDZV_ID         the job's rendezvous id, the same on every node (default SLURM_JOB_ID; required when NNODES > 1)
#   SHARED_CHECK_TIMEOUT  seconds to wait for every node's marker in RUN_DIR (default 300): a RUN_DIR that
#                   is not shared never shows the other nodes' markers, and the launch stops there
#   PYTHON          the interpreter (default python3); the torchrun it runs is `PYTHON -m torch.distributed.run`
#
# Exit status: 2 for a missing or bad setting (nothing started), 3 when RUN_DIR is not shared or not
# writable, else torchrun's.
set -euo pipefail

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "launch.sh: $1" >&2; exit "${2:-2}"; }

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
case $1 in
    -h|--help) usage; exit 0 ;;
    finetune|bridge) COMMAND=$1; shift ;;
    *) die "the first argument is the command, finetune or bridge (got '$1'; see --help)" ;;
esac

PYTHON=${PYTHON:-python3}
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-}}
SHARED_CHECK_TIMEOUT=${SHARED_CHECK_TIMEOUT:-300}
if [[ -z ${NPROC_PER_NODE:-} ]]; then
    NPROC_PER_NODE=1
    if command -v nvidia-smi >/dev/null 2>&1; then
        gpus=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
        if ((gpus > 0)); then NPROC_PER_NODE=$gpus; fi
    fi
fi

[[ -n ${RUN_DIR:-} ]] || die "RUN_DIR is not set: give a directory on storage that every node sees"
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || die "NNODES must be a positive integer (got '$NNODES')"
[[ $NODE_RANK =~ ^[0-9]+$ ]] && ((NODE_RANK < NNODES)) \
    || die "NODE_RANK must be an integer in 0..$((NNODES - 1)) (got '$NODE_RANK')"
[[ $NPROC_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "NPROC_PER_NODE must be a positive integer (got '$NPROC_PER_NODE')"
[[ $SHARED_CHECK_TIMEOUT =~ ^[0-9]+$ ]] || die "SHARED_CHECK_TIMEOUT must be a number of seconds"
if ((NNODES > 1)); then
    [[ -n ${RDZV_ENDPOINT:-} ]] || die "RDZV_ENDPOINT is not set: host:port on the first node (NNODES=$NNODES)"
    [[ $RDZV_ENDPOINT =~ ^[^:[:space:]]+:[0-9]+$ ]] || die "RDZV_ENDPOINT must be host:port (got '$RDZV_ENDPOINT')"
    [[ -n $RDZV_ID ]] || die "RDZV_ID is not set: one id for this job, the same on every node (NNODES=$NNODES)"
else
    RDZV_ENDPOINT=${RDZV_ENDPOINT:-127.0.0.1:0}
    RDZV_ID=${RDZV_ID:-single-node-$$}
fi
[[ $RDZV_ID =~ ^[A-Za-z0-9._-]+$ ]] || die "RDZV_ID may hold letters, digits, '.', '_' and '-' only (got '$RDZV_ID')"

# The keys this launcher sets from RUN_DIR.
if [[ $COMMAND == finetune ]]; then
    OWN_KEYS=(logger.log_dir checkpoint.save checkpoint.load)
else
    OWN_KEYS=(checkpoint.save checkpoint.load logger.tensorboard_dir)
fi
for arg in "$@"; do
    key=${arg%%=*}
    key=${key#"${key%%[!+~]*}"}  # without Hydra's + / ++ / ~ prefix
    for own in "${OWN_KEYS[@]}"; do
        [[ $arg == *=* && $key == "$own" ]] && die "$own is set by the launcher from RUN_DIR; do not pass it"
    done
done

"$PYTHON" -c 'import torch.distributed.run, nemo_mft' 2>/dev/null \
    || die "PYTHON=$PYTHON cannot import torch and nemo_mft: set PYTHON to the environment of this checkout"

# RUN_DIR: writable here, and the same directory on every node: each node leaves a marker and waits until
# it sees NNODES of them (a node-local directory only ever shows its own).
mkdir -p "$RUN_DIR" 2>/dev/null || die "cannot create RUN_DIR=$RUN_DIR" 3
RUN_DIR=$(cd "$RUN_DIR" && pwd)
[[ -w $RUN_DIR ]] || die "RUN_DIR=$RUN_DIR is not writable" 3
MARKERS=$RUN_DIR/.launch/$RDZV_ID.${SLURM_RESTART_COUNT:-0}  # a requeued job keeps its id: count only this start's markers
mkdir -p "$MARKERS"
echo "$NODE_RANK" > "$MARKERS/$(hostname).$$"
waited=0
while true; do
    seen=$(find "$MARKERS" -maxdepth 1 -type f | wc -l)
    ((seen >= NNODES)) && break
    ((waited >= SHARED_CHECK_TIMEOUT)) && die "RUN_DIR=$RUN_DIR is not shared by all nodes, or a node did not \
start: after ${SHARED_CHECK_TIMEOUT}s, $seen of $NNODES nodes left a marker in $MARKERS" 3
    sleep 1
    waited=$((waited + 1))
done

# The run's directories, under the absolute RUN_DIR.
if [[ $COMMAND == finetune ]]; then
    RUN_ARGS=("logger.log_dir=$RUN_DIR/logs" "checkpoint.save=$RUN_DIR/checkpoints" "checkpoint.load=$RUN_DIR/checkpoints")
else
    RUN_ARGS=("checkpoint.save=$RUN_DIR/checkpoints" "checkpoint.load=$RUN_DIR/checkpoints"
              "logger.tensorboard_dir=$RUN_DIR/tensorboard")
fi

# NCCL / networking settings belong to the cluster; typical ones, to export before launching:
#   export NCCL_SOCKET_IFNAME=ib0          # the interface of the inter-node network
#   export NCCL_IB_HCA=mlx5                # InfiniBand adapters to use
#   export NCCL_DEBUG=WARN                 # INFO to see the topology NCCL found
#   export GLOO_SOCKET_IFNAME=ib0          # for gloo groups (CPU runs)
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "launch.sh: node $NODE_RANK of $NNODES, $NPROC_PER_NODE process(es), rendezvous $RDZV_ENDPOINT id $RDZV_ID, \
run directory $RUN_DIR" >&2
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="$RDZV_ID" \
    -m nemo_mft "$COMMAND" "$@" "${RUN_ARGS[@]}"
