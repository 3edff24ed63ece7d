#!/usr/bin/env bash
# Wall time of the CPU ablation sweep (benchmarks/ablations.yaml, 14 children, --jobs 2) run by the code of one
# source tree: this checkout (children as Ray tasks on a local Ray runtime) or a worktree of an older commit
# (c91fac4 and before: the sweep's own pool of worker processes). Each child trains 20 steps instead of the
# spec's 200 and its test stage sees 2 batches instead of 20 (--set trainer.max_steps=20
# --set trainer.limit_test_batches=2, prerequisites too), so that both runs fit in an hour on a shared 2-core
# machine; the judge scores as the spec says. See benchmarks/README.md, "Ablations".
#   git worktree add /tmp/oldpool c91fac4
#   benchmarks/sweep_engines.sh /tmp/oldpool pool && benchmarks/sweep_engines.sh . ray \
#     && benchmarks/sweep_engines.sh /tmp/oldpool pool
# Every run works in one folder ($RUN, default /tmp/ifadit-sweep-engines): the SynthFaces cache and the
# prerequisites' checkpoints (trained once, untimed) are shared; each run has its own sqlite store and parent.
# The folder is not a source tree, so each run imports the code of its TREE alone (PYTHONPATH). Times are
# appended to $RUN/times.txt with the load average before and after.
set -euo pipefail
TREE=$(cd "${1:?usage: sweep_engines.sh TREE LABEL}" && pwd)
LABEL=${2:?usage: sweep_engines.sh TREE LABEL}
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
RUN=${RUN:-/tmp/ifadit-sweep-engines}
STEPS=20
mkdir -p "$RUN"
cd "$RUN"
export PYTHONPATH=$TREE OMP_NUM_THREADS=2 RAY_USAGE_STATS_ENABLED=0
export MLFLOW_TRACKING_URI=sqlite:///$RUN/prerequisites.db

# the spec's prerequisites, as its sweep would train them (recipe by path), once and untimed; phase 1 in
# float32 on a CPU without native bf16, as recipes/quickstart/run.sh does
CKPT=outputs/checkpoints/ifadit
for recipe in recognizer judge disentangle; do
  test -f "$CKPT/quickstart-$recipe/last.ckpt" && continue
  precision=()
  if [ "$recipe" = disentangle ] && ! grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo; then
    precision=(--trainer.precision 32-true)
  fi
  "$PY" -m ifadit.cli fit --config "$TREE/recipes/quickstart/$recipe.yaml" --trainer.max_steps "$STEPS" \
    "${precision[@]}" > "$RUN/prerequisite-$recipe.log" 2>&1
done

export MLFLOW_TRACKING_URI=sqlite:///$RUN/$LABEL.db
rm -rf "$RUN/$LABEL.db" "$RUN/work/$LABEL" "$RUN/results/$LABEL"
start=$(date +%s.%N)
load=$(cut -d' ' -f1-3 /proc/loadavg)
status=0
"$PY" -m ifadit.cli sweep "$TREE/benchmarks/ablations.yaml" --jobs 2 --set "trainer.max_steps=$STEPS" \
  --set trainer.limit_test_batches=2 \
  --name "ablations-$LABEL" --results_dir "$RUN/results/$LABEL" --work_dir "$RUN/work/$LABEL" \
  > "$RUN/$LABEL.log" 2>&1 || status=$?
wall=$(echo "$(date +%s.%N) - $start" | bc)
echo "$LABEL $(git -C "$TREE" rev-parse --short HEAD) wall ${wall%.*} s exit $status" \
  "load before $load after $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u +%FT%TZ)" | tee -a "$RUN/times.txt"
