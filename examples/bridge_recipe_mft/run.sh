#!/usr/bin/env bash
# A standard Megatron-Bridge recipe trained by Bridge's own finetune() with the MFT objective: one command,
# `nemo-mft bridge`, under torchrun. See README.md in this folder.
#
#   examples/bridge_recipe_mft/run.sh            # Llama 3.2 1B (conf/bridge/llama32_1b_mft.yaml): NGC container, GPUs
#   examples/bridge_recipe_mft/run.sh --lora     # the same with Bridge's LoRA (conf/bridge/llama32_1b_lora_mft.yaml)
#   examples/bridge_recipe_mft/run.sh --smoke    # tiny_recipe.py on generated data: 4 iterations, checks the wiring
#   examples/bridge_recipe_mft/run.sh --work DIR -- mft.tau=0.1 train.train_iters=100   # overrides
#
# Environment: NPROC_PER_NODE (default: the GPUs nvidia-smi lists, else 2 for --smoke), PRETRAINED (a Megatron
# checkpoint of Llama 3.2 1B; default: imported from meta-llama/Llama-3.2-1B with Bridge's AutoBridge into
# WORK/llama32_1b), PYTHON (default python3), BRIDGE_EXAMPLE_WORK (same as --work).
# The full run needs Megatron-Bridge and TransformerEngine (the NGC NeMo container; see the Dockerfile). The smoke run
# needs them too; on a CPU machine the tests run it with a test-only stand-in (tests/bridge/cpu_site).
#
# Exit status: 0 done; 2 bad arguments or a work directory that is not empty; anything else: the failed step's.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

SMOKE=0
LORA=0
WORK=${BRIDGE_EXAMPLE_WORK:-}
EXTRA=()
while (($#)); do
    case $1 in
        --smoke) SMOKE=1 ;;
        --lora) LORA=1 ;;
        --work) [[ $# -ge 2 ]] || { echo "run.sh: --work needs a directory" >&2; exit 2; }; WORK=$2; shift ;;
        --work=*) WORK=${1#--work=} ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if ((SMOKE && LORA)); then echo "run.sh: --smoke runs the tiny recipe; --lora is for the full run" >&2; exit 2; fi

PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT:$HERE${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's nemo_mft, and tiny_recipe.py
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false

if [[ -z ${NPROC_PER_NODE:-} ]]; then
    NPROC_PER_NODE=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        NPROC_PER_NODE=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
    fi
    if ((NPROC_PER_NODE == 0)); then
        if ((SMOKE)); then NPROC_PER_NODE=2; else echo "run.sh: no GPU found (set NPROC_PER_NODE)" >&2; exit 2; fi
    fi
fi

MODE=$( ((SMOKE)) && echo smoke || echo full )
if [[ -z $WORK ]]; then
    WORK=$ROOT/runs/examples/bridge_recipe_mft/$(date -u +%Y%m%d-%H%M%S)-$MODE
    while [[ -e $WORK ]]; do WORK=$WORK-$$; done
elif [[ -e $WORK && ( ! -d $WORK || -n $(ls -A "$WORK") ) ]]; then
    echo "run.sh: $WORK exists and is not an empty directory; choose another --work (results are never overwritten)" >&2
    exit 2
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

"$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("megatron.bridge") is None)' 2>/dev/null || {
    echo "run.sh: $PYTHON has no Megatron-Bridge (use the NGC NeMo container, or set PYTHON)" >&2
    exit 2
}

TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC_PER_NODE")
if ((SMOKE)); then
    echo "=== data and tokenizer -> $WORK" >&2
    "$PYTHON" "$HERE/make_data.py" "$WORK"
    ARGS=(--recipe tiny_recipe:tiny_llama_sft_config "dataset.dataset_root=$WORK/data"
          "tokenizer.tokenizer_model=$WORK/tokenizer" "checkpoint.save=$WORK/checkpoints"
          "checkpoint.load=$WORK/checkpoints")
else
    if [[ -z ${PRETRAINED:-} ]]; then
        PRETRAINED=$WORK/llama32_1b
        echo "=== importing meta-llama/Llama-3.2-1B with AutoBridge -> $PRETRAINED" >&2
        "$PYTHON" -c 'import sys; from megatron.bridge import AutoBridge; AutoBridge.import_ckpt(sys.argv[1], sys.argv[2])' \
            meta-llama/Llama-3.2-1B "$PRETRAINED"
    fi
    YAML=$ROOT/conf/bridge/llama32_1b_mft.yaml
    ((LORA)) && YAML=$ROOT/conf/bridge/llama32_1b_lora_mft.yaml
    ARGS=(--config-file "$YAML" "checkpoint.pretrained_checkpoint=$PRETRAINED" "checkpoint.save=$WORK/checkpoints"
          "logger.tensorboard_dir=$WORK/tensorboard")
fi

echo "=== nemo-mft bridge on $NPROC_PER_NODE process(es)" >&2
"${TORCHRUN[@]}" -m nemo_mft bridge "${ARGS[@]}" "${EXTRA[@]}" 2>&1 | tee "$WORK/train.log"
echo "results: $WORK (train.log, checkpoints/)" >&2
