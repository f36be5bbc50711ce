#!/usr/bin/env bash
# The end of a part of the toy BindWeave's long run: its newest checkpoint's weights (the EMA) annealed with
# the plain MSE (configs/toy-long-anneal.yaml: 400 steps, lr 2e-4, subject weight 1), then `toy land`, which
# ships them if they beat the shipped model (fidelity and direction accuracy, each beyond a standard error
# of the paired difference on SAMPLES held-out scenes; the guidance scale chosen from 1 2 3 on world seed 1).
# A rerun resumes: the anneal starts again only when the long run has a newer checkpoint than its start.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=runs/toy-long
SAMPLES=${SAMPLES:-32}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# checkpoint-* folders are whole (written under .tmp-* and renamed); zero-padded, so they sort by step.
last=$(find "$RUN/train" -mindepth 1 -maxdepth 1 -name 'checkpoint-*' | sort | tail -n 1)
[ -n "$last" ] || { echo "no checkpoint in $RUN/train yet: run make toy-long first" >&2; exit 1; }
if [ "$(cat "$RUN/anneal/from" 2> /dev/null)" != "$last" ]; then
  rm -rf "$RUN/anneal" && mkdir -p "$RUN/anneal"
  cp -rL "$last" "$RUN/anneal/start.partial" && rm -rf "$RUN/anneal/start.partial/training_state"
  mv "$RUN/anneal/start.partial" "$RUN/anneal/start" && echo "$last" > "$RUN/anneal/from"
  echo "annealing $last"
fi
"$BIN/bindweave" train configs/toy-long-anneal.yaml
"$BIN/bindweave" toy land "$RUN/anneal/train" --out "$RUN/land" --num-samples "$SAMPLES" --guidance-scales 1 2 3
