"""How much bf16 changes the bundled mito model's segmentation of real held-out data (the prediction issue's rule:
keep bf16 on a device only if it flips < 0.1% of the binary output voxels).

The Lucchi++ volume (`--data`, raw/ and mito/ slices) is converted and CLAHE-equalized with the real commands; the
bundled model predicts slices 125-164 (the ones it never trained on) in float32 and in bf16, with the passes
`incasem-like predict` uses (batch norm folded, no test-time augmentation). bf16 is run two ways:
- `emulated` (any device): float32 arithmetic with every convolution's input, weights, bias and output rounded to
  bfloat16, which is what CUDA autocast feeds cuDNN and gets back (products accumulate in float32 there too);
  this machine's CPU has no native bf16, where autocast is >20x slower than float32;
- `native` (CUDA only): `torch.autocast(dtype=torch.bfloat16)` + channels_last_3d, as `predict` runs on GPUs.
Reported: segmentation voxels that differ from float32 at the model's threshold and at 0.5, the largest
probability difference, and F1 against the labels for each (every voxel counts: the field's metric).

    python benchmarks/bf16.py [--data ../shared/data/lucchi_pp_train] [--out benchmarks/results/bf16_cpu.json]
"""

import argparse
import copy
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from convert import machine, source_digest, write_result  # noqa: E402  (shared helpers)

from incasem_like.core.geometry import Coordinate, roi_from_voxels  # noqa: E402
from incasem_like.nn.checkpoints import model_from_checkpoint  # noqa: E402
from incasem_like.nn.inference import predict_region, raw_with_context  # noqa: E402
from incasem_like.nn.model import inference_model  # noqa: E402
from incasem_like.nn.models import bundled_model  # noqa: E402
from incasem_like.nn.normalization import normalize  # noqa: E402
from incasem_like.ops.metrics import scores  # noqa: E402
from incasem_like.ops.morphology import segment  # noqa: E402
from incasem_like.stages.predict import default_step, recommended_settings  # noqa: E402
from incasem_like.store.datasets import open_dataset  # noqa: E402

HELD_OUT = ((125, 0, 0), (40, 768, 1024))  # the slices the bundled model never trained on


def to_bf16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.bfloat16).to(tensor.dtype)


def emulate_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose convolutions see and return bfloat16-rounded values, computed in float32."""
    emulated = copy.deepcopy(model)
    for module in emulated.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = to_bf16(module.weight.data)
            if module.bias is not None:
                module.bias.data = to_bf16(module.bias.data)
            module.register_forward_pre_hook(lambda _, inputs: tuple(to_bf16(x) for x in inputs))
            module.register_forward_hook(lambda _, __, output: to_bf16(output))
    return emulated


def prepare(data: Path, workdir: Path) -> tuple[str, str]:
    """Lucchi raw -> CLAHE and labels, with the product's own commands; returns both dataset paths."""
    container = workdir / "lucchi.zarr"
    commands = [
        ["convert", data / "raw", container / "volumes/raw", "--voxel-size", "5", "5", "5"],
        ["convert", data / "mito", container / "volumes/labels/mito", "--voxel-size", "5", "5", "5", "--labels"],
        ["clahe", container / "volumes/raw", container / "volumes/raw_clahe"],
    ]
    for command in commands:
        subprocess.run([sys.executable, "-m", "incasem_like", *map(str, command), "--quiet"], check=True)
    return str(container / "volumes/raw_clahe"), str(container / "volumes/labels/mito")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared/data/lucchi_pp_train")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bf16_cpu.json")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    digest = source_digest()
    checkpoint = bundled_model("mito")
    model, state = model_from_checkpoint(checkpoint)
    model = inference_model(model)
    threshold = recommended_settings(checkpoint)["threshold"]
    input_shape = tuple(model.config.input_edge_for(s, axis) for axis, s in enumerate(default_step(model.config)))
    context = (Coordinate(input_shape) - Coordinate(model.config.output_shape(input_shape))) / 2
    with tempfile.TemporaryDirectory(prefix="incasem_bench_bf16_", dir="/tmp") as workdir:
        raw_path, labels_path = prepare(args.data, Path(workdir))
        raw = open_dataset(raw_path)
        roi = roi_from_voxels(*HELD_OUT, raw.voxel_size, raw.roi.begin)
        region = normalize(raw_with_context(raw, roi, context))
        labels = open_dataset(labels_path)[roi] > 0

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = {"fp32": (model, False), "bf16_emulated": (emulate_bf16(model), False)}
    if device.type == "cuda":
        variants["bf16_native"] = (model, True)
    results = {}
    for name, (network, bf16) in variants.items():
        start = time.perf_counter()
        results[name] = predict_region(network.to(device), region, input_shape, device, bf16, "quantized")
        seconds = time.perf_counter() - start
        print(f"{name}: {seconds:.1f} s", flush=True)
        results[name + "_seconds"] = round(seconds, 2)

    voxels = labels.size
    comparisons = {}
    for name in (n for n in variants if n != "fp32"):
        comparison = {
            "seconds": results[name + "_seconds"],
            "probability_max_abs_difference_of_255": int(
                np.abs(results[name].astype(np.int16) - results["fp32"].astype(np.int16)).max()
            ),
        }
        for t in sorted({threshold, 0.5}):
            changed = int(np.count_nonzero(segment(results[name], t) != segment(results["fp32"], t)))
            comparison[f"threshold_{t}"] = {
                "segmentation_voxels_changed": changed,
                "changed_fraction": changed / voxels,
                "within_0.1_percent": changed / voxels < 1e-3,
                "f1": round(f1(segment(results[name], t), labels), 4),
                "f1_fp32": round(f1(segment(results["fp32"], t), labels), 4),
            }
        comparisons[name] = comparison
    result = {
        "benchmark": "bf16 vs float32 segmentation of the bundled mito model on held-out Lucchi slices",
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine(("incasem-like", "torch", "numpy")),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "model": state.get("provenance", {}).get("name", "bundled mito"),
            "region_voxels": {"offset": list(HELD_OUT[0]), "shape": list(HELD_OUT[1])},
            "pass_input_shape": list(input_shape),
            "model_threshold": threshold,
            "fp32_seconds": results["fp32_seconds"],
        },
        "comparisons": comparisons,
        "targets": {
            f"{name}_changes_under_0.1_percent_at_{t}": comparison[f"threshold_{t}"]["within_0.1_percent"]
            for name, comparison in comparisons.items()
            for t in sorted({threshold, 0.5})
        },
    }
    write_result(result, args.out)


def f1(segmentation: np.ndarray, truth: np.ndarray) -> float:
    predicted = segmentation.astype(bool)
    counts = {
        "true_positives": int(np.count_nonzero(predicted & truth)),
        "false_positives": int(np.count_nonzero(predicted & ~truth)),
        "false_negatives": int(np.count_nonzero(~predicted & truth)),
    }
    return scores(counts)["f1"]


if __name__ == "__main__":
    main()
