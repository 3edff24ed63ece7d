#!/usr/bin/env bash
# make foundations: train the SynthFaces foundations (identity encoder, judge, renderer, then phase 1 on them)
# and export them as safetensors into ifadit/foundations/ with their sha256 in its manifest.json. Each fit
# resumes its own run from last.ckpt when one exists, so the chain can be stopped and rerun across sittings;
# a finished run is only exported again.
set -euo pipefail
IFADIT=${IFADIT:-.venv/bin/ifadit}
PY=${PY:-.venv/bin/python}
RUNS=outputs/checkpoints/ifadit
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///outputs/mlflow.db}
mkdir -p outputs/foundations

fit() {  # fit RECIPE: train recipes/foundations/RECIPE.yaml, resuming its run if it has one
  local resume=()
  [ -f "$RUNS/foundations-$1/last.ckpt" ] && resume=(--ckpt_path last)
  echo "== foundations: $1 ${resume[*]} =="
  "$IFADIT" fit --config "recipes/foundations/$1.yaml" "${resume[@]}" 2>&1 | tee "outputs/foundations/$1.log"
}

start=$(date +%s)
fit recognizer
fit judge
fit renderer
# phase 1 loads the identity encoder and the renderer by name, so they are exported before it trains
"$PY" -m ifadit.foundations synthfaces64-identity-encoder synthfaces64-judge synthfaces64-generator \
  synthfaces64-parameter-mapper
fit disentangle
"$PY" -m ifadit.foundations synthfaces64-attribute-encoder synthfaces64-mapper
echo "foundations: $(( $(date +%s) - start )) s wall; score them: $PY benchmarks/foundations.py --shipped"
