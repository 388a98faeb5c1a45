#!/usr/bin/env bash
# Make the bundled mito model the way incasem_like/nn/models/mito_lucchi_cpu.pt was made: prepare the Lucchi++
# FIB-SEM volume (raw + mitochondria TIFF slices), train configs/training/lucchi_mito_cpu.yaml within its time
# budget (rerun the script to resume a run that was stopped: the budget counts every invocation), choose the
# checkpoint, threshold and clean-up on slices 125-144 (without test-time augmentation: on a CPU it costs 14x the
# prediction time for +0.001 F1), report on slices 145-164, and export the model with those choices as float16
# weights.
#   pipelines/lucchi_mito.sh DATA_DIR WORK_DIR
# DATA_DIR holds raw/ and mito/ slice folders (e.g. ../shared/data/lucchi_pp_train); WORK_DIR gets lucchi.zarr,
# runs/, the predictions and mito_lucchi_cpu.pt; the row joins benchmarks/results/quality_lucchi.json.
set -euo pipefail
repo=$(dirname "$(realpath "$0")")/..
python "$repo/benchmarks/quality.py" --data "$1" --work "$2" --rows lucchi_mito_cpu+clean \
    --export "$2/mito_lucchi_cpu.pt"
