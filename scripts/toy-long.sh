#!/usr/bin/env bash
# One part of the toy BindWeave's long run (configs/toy-long.yaml says what it trains), on $THREADS threads.
# Every step resumes or is skipped when already done, so rerunning it after an interruption or on the next
# session continues the run; only the VAE (44 min on one thread) restarts if it was cut. A part ends with
# `make toy-long-land`, which anneals the newest checkpoint's weights with the plain MSE and ships them if they
# beat the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=runs/toy-long
SHIPPED=src/bindweave/assets/toy-bindweave
# Torch threads (default 1, so tests can run beside it). On this 2-core CPU, THREADS=2 alone took 1.5 s a DiT
# step; one thread beside another trainer, 3.0 s.
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$RUN"
# toy data resumes: rerun into a folder made before the subject masks existed, it adds them (the
# subject-weighted loss needs them).
[ -d "$RUN/data/masks" ] || "$BIN/bindweave" toy data --out "$RUN/data" --num-clips 1200

# A new machine after a part has landed: the shipped model holds this run's VAE (2x space, no time
# compression, width 16, 4 latent channels), so it becomes the base, its DiT the start (with a fresh
# optimizer) and the VAE is not retrained: landed progress is never lost.
long_run_vae() {
  "$BIN/python" -c 'import json, sys; c = json.load(open(sys.argv[1]))
sys.exit((c["scale_factor_spatial"], c["scale_factor_temporal"], c["base_dim"], c["z_dim"]) != (2, 1, 16, 4))' "$1"
}
if [ ! -e "$RUN/base" ] && ! ls "$RUN"/train/checkpoint-* > /dev/null 2>&1 && long_run_vae "$SHIPPED/vae/config.json"; then
  rm -rf "$RUN/base.partial" && cp -r "$SHIPPED" "$RUN/base.partial" && mv "$RUN/base.partial" "$RUN/base"
  echo "new machine: starting from the shipped model ($SHIPPED), which has this run's VAE"
fi
# toy base keeps a base it made with these settings (its toy_base.json) and refuses one made otherwise; a copy
# of the shipped model has no such record and is kept as it is.
if [ -f "$RUN/base/model_index.json" ] && [ ! -f "$RUN/base/toy_base.json" ]; then
  echo "base: the shipped model's copy in $RUN/base"
else
  "$BIN/bindweave" toy base --out "$RUN/base" --spatial-compression 2 --temporal-compression 1 --vae-width 16 \
    --latent-channels 4 --subject-weight 10 --steps 10000 --threads "$THREADS"
fi
"$BIN/bindweave" precompute --config configs/toy-long.yaml --manifest "$RUN/data/manifest.jsonl" \
  --output-dir "$RUN/cache"
"$BIN/bindweave" train configs/toy-long.yaml
