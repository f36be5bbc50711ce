#!/usr/bin/env bash
# The shipped toy model's continued training on its own VAE, in parts, on one torch thread
# (configs/toy-continue.yaml: one part = its stages, a climb and an anneal). Each part ends with `toy land`,
# which ships the part's final DiT if it beats the shipped model; the next part starts from that DiT either
# way. Every step resumes or is skipped when done, so an interrupted part continues where it stopped; on a
# new machine the first part starts from the shipped model (whatever landed last), so landed progress is
# never lost. PARTS=N runs N parts (default 1); CONFIG, RUN (the config's folder of data, base, cache and
# train), SHIPPED (the model to start from and to land into) and SAMPLES (held-out scenes per score) are for
# trying the loop on a small config.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PARTS=${PARTS:-1}
CONFIG=${CONFIG:-configs/toy-continue.yaml}
RUN=${RUN:-runs/toy-continue}
SAMPLES=${SAMPLES:-32}
SHIPPED=${SHIPPED:-src/bindweave/assets/toy-bindweave}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUN/parts"
# toy data resumes: rerun into a folder made before the subject masks existed, it adds them (the
# subject-weighted loss needs them).
[ -d "$RUN/data/masks" ] || "$BIN/bindweave" toy data --out "$RUN/data" --num-clips 2400
if [ ! -e "$RUN/base" ]; then
  rm -rf "$RUN/base.partial" && cp -r "$SHIPPED" "$RUN/base.partial" && mv "$RUN/base.partial" "$RUN/base"
fi
"$BIN/bindweave" precompute --config "$CONFIG" --manifest "$RUN/data/manifest.jsonl" --output-dir "$RUN/cache"

# The newest checkpoint of the part in $RUN/train if it reached the config's last step, else nothing.
finished_checkpoint() {
  "$BIN/python" -c 'import json, sys
from bindweave.training.checkpoint import STATE_DIR, find_latest_checkpoint
from bindweave.training.config import load_train_config
config = load_train_config(sys.argv[1])
last = find_latest_checkpoint(config.output_dir)
if last is not None and json.loads((last / STATE_DIR / "state.json").read_text())["step"] >= config.total_steps:
    print(last)' "$CONFIG"
}

for _ in $(seq "$PARTS"); do
  part=$(find "$RUN/parts" -mindepth 1 -maxdepth 1 | wc -l)
  "$BIN/bindweave" train "$CONFIG"
  last=$(finished_checkpoint)
  [ -n "$last" ] || { echo "the part stopped before its last step: $RUN/train" >&2; exit 1; }
  "$BIN/bindweave" toy land "$RUN/train" --shipped "$SHIPPED" --out "$RUN/land/part-$part" \
    --num-samples "$SAMPLES" --guidance-scales 1 2 3
  # The part's final DiT becomes the next part's start (swapped in before the part is filed away, so an
  # interruption here repeats the swap rather than losing it).
  rm -rf "$RUN/base/transformer.next" && cp -rL "$last/transformer" "$RUN/base/transformer.next"
  rm -rf "$RUN/base/transformer.prev"
  [ ! -e "$RUN/base/transformer" ] || mv "$RUN/base/transformer" "$RUN/base/transformer.prev"
  mv "$RUN/base/transformer.next" "$RUN/base/transformer" && rm -rf "$RUN/base/transformer.prev"
  mv "$RUN/train" "$RUN/parts/part-$part"
done
