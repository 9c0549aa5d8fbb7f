#!/bin/bash
# Run zoo build stages one after another into the staged v3 build (zoo_build/), one thread each:
#   bash zoo_build/run_stages.sh clip dino dino_eval
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
for stage in "$@"; do
  .venv/bin/python scripts/build_zoo.py --stage "$stage" --weights zoo_build/weights --cache zoo_build/cache \
    --subjects zoo_build/subjects --threads 1 ${UNET_BUDGET_MIN:+--unet-budget-min $UNET_BUDGET_MIN} \
    > "zoo_build/cache/logs/$stage.log" 2>&1 || { echo "stage $stage failed" >&2; exit 1; }
done
