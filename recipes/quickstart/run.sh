#!/usr/bin/env bash
# The quickstart chain on SynthFaces 64 px, CPU: phase 1 and phase 2 on top of the shipped foundations (the
# identity encoder synthfaces64-identity-encoder and the renderer synthfaces64-generator, both frozen; phase 1
# fine-tunes the shipped synthfaces64-attribute-encoder and synthfaces64-mapper), the
# compensator on the finished flow, then a fresh random key, unchecked,
# anonymizes and recovers the held-out test identities, scored by the judge shipped with ifadit
# (synthfaces64-judge: trained apart, on other identities, by recipes/foundations/judge.yaml; it never trains
# the anonymizer).
set -euo pipefail  # pipefail: a failed fit fails the chain even through tee
IFADIT=${IFADIT:-.venv/bin/ifadit}
OUT=${OUT:-outputs/quickstart}
CKPT=outputs/checkpoints/ifadit
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///outputs/mlflow.db}
start=$(date +%s)
# Each fit replaces what an earlier run left in its checkpoint folder, so every stage chains from this run's
# checkpoints; only this script's own outputs (logs, the demo key, scores) are cleared.
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1/4 phase 1: the shipped attribute encoder and mapper, fine-tuned against the shipped renderer =="
# The recipe's bf16 autocast is 1.2x faster than float32 on a CPU with native bf16 (AVX512-BF16 or AMX) and
# about 12x slower where bf16 is emulated (an AVX2-only CPU: 6.6 s against 0.5 s a step): float32 there.
precision=()
grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo 2>/dev/null || precision=(--trainer.precision 32-true)
"$IFADIT" fit --config recipes/quickstart/disentangle.yaml "${precision[@]}" 2>&1 | tee "$OUT/disentangle.log"
test -f "$CKPT/quickstart-disentangle/last.ckpt"
echo "== 2/4 phase 2: keyed flow and compensator =="
"$IFADIT" fit --config recipes/quickstart/flow.yaml 2>&1 | tee "$OUT/flow.log"
test -f "$CKPT/quickstart-flow/last.ckpt"
echo "== 3/4 the compensator alone, on the finished flow =="
"$IFADIT" fit --config recipes/quickstart/compensator.yaml 2>&1 | tee "$OUT/compensator.log"
MODEL="$CKPT/quickstart-compensator/last.ckpt"
test -f "$MODEL"
echo "== 4/4 a fresh random key: anonymize and recover the held-out test identities =="
"$IFADIT" keygen "$OUT/quickstart.key"
"$IFADIT" score --config recipes/quickstart/compensator.yaml --ckpt_path "$MODEL" \
  --judge synthfaces64-judge --key "$OUT/quickstart.key" --out "$OUT"
echo "quickstart chain: $(( $(date +%s) - start )) s wall"
echo "every metric of the suite (re-identification, security, diversity, utility):"
echo "  $IFADIT evaluate --config recipes/quickstart/compensator.yaml --ckpt_path $MODEL \\"
echo "    --recognizer synthfaces64-judge --key $OUT/quickstart.key"
echo "MLflow UI on the runs: .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI}"
