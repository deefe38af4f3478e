#!/usr/bin/env bash
# The multi-node launch on one machine: two "nodes" on localhost, each a torchrun agent started by ./launch.sh
# (c10d rendezvous on 127.0.0.1, one process per node, DP=2), then the same recipe on one node with two
# processes; prints the per-iteration losses of both and checks that they are equal. CPU (gloo) is enough.
# See README.md in this folder.
#
#   examples/multinode_launch/run.sh            # 20 iterations of conf/mft_tiny.yaml (about 1 min on 2 cores)
#   examples/multinode_launch/run.sh --smoke    # 3 iterations: what the tests run (about 30 s)
#   examples/multinode_launch/run.sh --work DIR -- model.tensor_model_parallel_size=2   # overrides for both runs
#
# Environment: PYTHON (default: the checkout's .venv), MULTINODE_EXAMPLE_WORK (same as --work).
# Writes WORK/data, WORK/two_nodes (node0.log, node1.log, logs/, checkpoints/) and WORK/one_node.
#
# Exit status: 0 equal losses; 1 the losses differ; 2 bad arguments or a work directory that is not empty;
# anything else: the launch that failed, with its log above.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

SMOKE=0
WORK=${MULTINODE_EXAMPLE_WORK:-}
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
export PYTHON
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's nemo_mft
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if ((SMOKE)); then MODE=smoke ITERS=3; else MODE=full ITERS=20; fi
if [[ -z $WORK ]]; then
    WORK=$ROOT/runs/examples/multinode_launch/$(date -u +%Y%m%d-%H%M%S)-$MODE
    while [[ -e $WORK ]]; do WORK=$WORK-$$; done
elif [[ -e $WORK && ( ! -d $WORK || -n $(ls -A "$WORK") ) ]]; then
    echo "run.sh: $WORK exists and is not an empty directory; choose another --work (results are never overwritten)" >&2
    exit 2
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# A small question/answer data set: four words, answered by the same words reversed.
"$PYTHON" - "$WORK/data" <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1]); root.mkdir(parents=True)
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
rows = []
for i in range(40):
    q = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(4))
    rows.append({"input": f"Q{i}: {q}? ", "output": " ".join(reversed(q.split()))})
(root / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
(root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
EOF

RECIPE=(--config-name mft_tiny "dataset.dataset_root=$WORK/data" dataset.seq_length=32 "train.train_iters=$ITERS"
        train.global_batch_size=4 train.micro_batch_size=1 scheduler.lr_warmup_iters=1 evaluation.eval_interval=null
        logger.progress_bar=false "${EXTRA[@]}")
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "=== two nodes on localhost (rendezvous 127.0.0.1:$PORT), one process each" >&2
pids=()
for node in 0 1; do
    RUN_DIR=$WORK/two_nodes NNODES=2 NODE_RANK=$node NPROC_PER_NODE=1 RDZV_ENDPOINT=127.0.0.1:$PORT \
        RDZV_ID=multinode-example-$$ SHARED_CHECK_TIMEOUT=60 \
        "$HERE/launch.sh" finetune "${RECIPE[@]}" > "$WORK/node$node.log" 2>&1 &
    pids+=($!)
done
failed=0
for node in 0 1; do
    if ! wait "${pids[$node]}"; then failed=1; echo "--- node $node failed:" >&2; tail -n 40 "$WORK/node$node.log" >&2; fi
done
((failed == 0)) || exit 4
mv "$WORK/node0.log" "$WORK/node1.log" "$WORK/two_nodes/"

echo "=== one node, two processes" >&2
if ! RUN_DIR=$WORK/one_node NNODES=1 NPROC_PER_NODE=2 "$HERE/launch.sh" finetune "${RECIPE[@]}" \
        > "$WORK/one_node.log" 2>&1; then
    tail -n 40 "$WORK/one_node.log" >&2
    exit 5
fi
mv "$WORK/one_node.log" "$WORK/one_node/"

"$PYTHON" - "$WORK/two_nodes/logs/metrics.jsonl" "$WORK/one_node/logs/metrics.jsonl" <<'EOF'
import json, sys
def losses(path):
    with open(path) as handle:
        return {r["iteration"]: r["loss"] for r in map(json.loads, filter(str.strip, handle)) if "loss" in r}
two, one = losses(sys.argv[1]), losses(sys.argv[2])
print("| iteration | two nodes | one node |\n|---|---|---|")
for it in sorted(set(two) | set(one)):
    print(f"| {it} | {two.get(it)!r} | {one.get(it)!r} |")
if not two or two != one:
    print("the losses differ", file=sys.stderr)
    sys.exit(1)
print(f"equal losses over {len(two)} iterations")
EOF
echo "results: $WORK" >&2
