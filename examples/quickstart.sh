#!/usr/bin/env bash
# The whole Meerkat pipeline on the built-in defaults (SmolLM2-135M, sentiment2), sized for a 2-core CPU:
# mask -> partition -> train -> eval -> gradip inspect. Outputs go to ${MEERKAT_OUT:-runs/quickstart}.
set -euo pipefail
OUT=${MEERKAT_OUT:-runs/quickstart}
mkdir -p "$OUT"
MODEL=smollm2-135m
TASK=sentiment2

echo "== 1. mask: top 0.1% most sensitive weights on pre-training text"
[ -f "$OUT/mask.safetensors" ] || meerkat mask --model $MODEL --density 1e-3 --samples 32 --seq-len 128 \
  --batch-size 4 --out "$OUT/mask.safetensors"
meerkat mask stats "$OUT/mask.safetensors"

echo "== 2. partition: 10 clients, Dirichlet(0.5) label skew"
[ -d "$OUT/partition" ] || meerkat partition --task $TASK --clients 10 --scheme dirichlet --alpha 0.5 --seed 0 \
  --out "$OUT/partition" --plot "$OUT/partition.png"

echo "== 3. train: federated sparse ZO (seeds down, scalars up); CE over the label words (the default --loss classification)"
RESUME=""
[ -f "$OUT/run/config.json" ] && RESUME="--resume"
meerkat train --model $MODEL --mask "$OUT/mask.safetensors" --partition "$OUT/partition" --task $TASK \
  --rounds ${ROUNDS:-8} --local-steps 5 --clients-per-round 4 --batch-size 8 --lr ${LR:-1e-4} --eps 1e-3 \
  --eval-limit 200 --out "$OUT/run" $RESUME

echo "== 4. eval: the trained checkpoint on 200 test examples (zero-shot is in the run's metrics, round 0)"
meerkat eval --model $MODEL --task $TASK --checkpoint "$OUT/run" --limit 200

echo "== 5. GradIP: per-client trajectories from the server's virtual paths"
meerkat gradip inspect "$OUT/run" --plot "$OUT/gradip.png"
