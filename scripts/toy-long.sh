#!/usr/bin/env bash
# One part of the toy BindWeave's long run on one torch thread (configs/toy-long.yaml says what it trains).
# Every step resumes or is skipped when already done, so rerunning it after an interruption or on the next
# session continues the run; only the VAE (44 min on one thread) restarts if it was cut.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=runs/toy-long
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUN"
[ -f "$RUN/data/manifest.jsonl" ] || "$BIN/bindweave" toy data --out "$RUN/data" --num-clips 1200
"$BIN/bindweave" toy base --out "$RUN/base" --spatial-compression 2 --temporal-compression 1 \
  --vae-width 16 --subject-weight 10 --steps 10000 --threads 1
"$BIN/bindweave" precompute --config configs/toy-long.yaml --manifest "$RUN/data/manifest.jsonl" \
  --output-dir "$RUN/cache"
"$BIN/bindweave" train configs/toy-long.yaml
