#!/usr/bin/env bash
# Prepare the Lucchi++ FIB-SEM volume (raw + mitochondria TIFF slices), train the small CPU mito model and export
# its best checkpoint (by validation F1 at the best threshold of the sweep, which it records as the threshold
# `predict` uses) as float16 weights: this is how incasem_like/models/mito_lucchi_cpu.pt was made.
#   pipelines/lucchi_mito.sh DATA_DIR WORK_DIR [CONFIG]
# DATA_DIR holds raw/ and mito/ slice folders (e.g. ../shared/data/lucchi_pp_train); WORK_DIR gets lucchi.zarr,
# runs/ and mito_lucchi_cpu.pt. The config (default configs/training/lucchi_mito_cpu.yaml) trains on slices
# 0-124 and validates on the last 40 (125-164).
set -euo pipefail
data=$(realpath "$1"); work=$2; config_arg=${3:-configs/training/lucchi_mito_cpu.yaml}
config=$(realpath "${3:-$(dirname "$0")/../$config_arg}")
mkdir -p "$work" && cd "$work"
workers=${WORKERS:-2}
incasem-like convert "$data/raw" lucchi.zarr/volumes/raw --voxel-size 5 5 5 --workers "$workers" --quiet
incasem-like convert "$data/mito" lucchi.zarr/volumes/labels/mito --voxel-size 5 5 5 --labels --workers "$workers" --quiet
incasem-like clahe lucchi.zarr/volumes/raw lucchi.zarr/volumes/raw_clahe --workers "$workers" --quiet
incasem-like labels metric-mask lucchi.zarr/volumes/labels/mito lucchi.zarr/volumes/metric_masks/mito --organelle mito --workers "$workers" --quiet
incasem-like train "$config"
python - "$config" "$config_arg" <<'EOF'
import json
import os
import sys
from pathlib import Path

from incasem_like.training.checkpoints import export_weights
from incasem_like.training.config import load_config

summary = json.loads((Path(load_config(sys.argv[1]).run_dir) / "summary.json").read_text())
best = summary["best_at_swept_threshold"]
at_best = next(entry for entry in summary["validation"] if entry["iteration"] == best["iteration"])
provenance = {
    "name": "mito_lucchi_cpu",
    "trained_on": "Lucchi++ training volume (EPFL hippocampus CA1 FIB-SEM, 5 nm voxels), slices 0-124, raw_clahe",
    "validated_on": "slices 125-164 of the same volume (the embedded sample is a crop of them)",
    "config": sys.argv[2],
    "iteration": best["iteration"],
    "validation_f1_at_0.5": round(at_best["f1"], 4),
    "validation_f1": best["f1"],
    "threshold": best["threshold"],
    "threshold_chosen_on": "the same validation slices (sweep 0.05..0.95), so validation_f1 is optimistic",
    "training_minutes": round(summary["timing"]["wall_seconds"] / 60, 1),
    "device": f"{summary['device']} ({os.cpu_count()} cores), {'bf16' if summary['bf16'] else 'float32'}",
}
print("exported", export_weights(best["checkpoint"], "mito_lucchi_cpu.pt", provenance, best["threshold"]))
EOF
