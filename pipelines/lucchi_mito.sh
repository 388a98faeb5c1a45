#!/usr/bin/env bash
# Prepare the Lucchi++ FIB-SEM volume (raw + mitochondria TIFF slices) and train the small CPU mito model.
#   pipelines/lucchi_mito.sh DATA_DIR WORK_DIR [CONFIG]
# DATA_DIR holds raw/ and mito/ slice folders (e.g. ../shared/data/lucchi_pp_train); WORK_DIR gets lucchi.zarr
# and runs/. The config (default configs/training/lucchi_mito_cpu.yaml) trains on slices 0-124 and validates on
# the last 40 (125-164).
set -euo pipefail
data=$(realpath "$1"); work=$2; config=$(realpath "${3:-$(dirname "$0")/../configs/training/lucchi_mito_cpu.yaml}")
mkdir -p "$work" && cd "$work"
workers=${WORKERS:-2}
incasem-like convert "$data/raw" lucchi.zarr/volumes/raw --voxel-size 5 5 5 --workers "$workers" --quiet
incasem-like convert "$data/mito" lucchi.zarr/volumes/labels/mito --voxel-size 5 5 5 --labels --workers "$workers" --quiet
incasem-like clahe lucchi.zarr/volumes/raw lucchi.zarr/volumes/raw_clahe --workers "$workers" --quiet
incasem-like labels metric-mask lucchi.zarr/volumes/labels/mito lucchi.zarr/volumes/metric_masks/mito --organelle mito --workers "$workers" --quiet
incasem-like train "$config"
