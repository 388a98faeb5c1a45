"""Our models for other tools: TorchScript and ONNX files, and bioimage.io model packages (`nn.packages` reads
them back).

The exported networks take (N, 1, z, y, x) float32 input normalized as in training (`nn.normalization`) of one
fixed spatial shape (`export_shape`: valid convolutions crop by their context, and the crops are traced for one
shape), and give foreground logits (N, 1, z', y', x'), z' = z - 2 context and so on.
"""

import copy
import io
import itertools
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from incasem_like.core.files import atomic_file, write_atomically
from incasem_like.nn.checkpoints import model_from_checkpoint
from incasem_like.nn.model import NetworkConfig, Triple, UNet3D, triple
from incasem_like.nn.normalization import IntensityRange, checkpoint_rule, normalize
from incasem_like.nn.packages import CONFIG_KEY

ExportFormat = Literal["bioimageio", "torchscript", "onnx"]
#: the method (ASEM) and the bundled model's data, cited by every package
CITATIONS = [
    {
        "text": "Gallusser, B., et al. Deep neural network automated segmentation of cellular structures in volume "
        "electron microscopy. J Cell Biol 222(2), 2022.",
        "doi": "10.1083/jcb.202208005",
    }
]


def export_shape(network: NetworkConfig) -> Triple:
    """The input shape exported models take: the smallest whose output is twice the downsampling factor along each
    axis the network looks along, one slice along one it does not."""
    factors = network.total_factor()
    return triple(
        network.input_edge_for(2 * factors[axis] if network.sees_axis(axis) else 1, axis) for axis in range(3)
    )


def _traceable(model: UNet3D) -> UNet3D:
    """The model in eval mode, for tracing (any batch size; `inference_model`'s 2D slices fix the batch)."""
    return copy.deepcopy(model).eval()


def export_torchscript(model: UNet3D, input_shape: Triple, out: Path) -> Path:
    """`model` traced for inputs of `input_shape` -> a TorchScript file (written atomically)."""
    example = torch.zeros((1, 1, *input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but TorchScript is what tools read
        traced = torch.jit.trace(_traceable(model), example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    write_atomically(out, buffer.getvalue())
    return out


def export_onnx(model: UNet3D, input_shape: Triple, out: Path) -> Path:
    """`model` -> an ONNX file for inputs of `input_shape`, any batch size (written atomically)."""
    example = torch.zeros((2, 1, *input_shape))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            _traceable(model),
            (example,),
            str(path),
            input_names=["raw"],
            output_names=["logits"],
            dynamic_shapes={"raw": {0: torch.export.Dim("batch", min=1)}},
            external_data=False,
            verbose=False,
        )
        write_atomically(out, path.read_bytes())
    return out


def _preprocessing(intensity: IntensityRange) -> list[dict]:
    """bioimage.io preprocessing that maps raw as `intensity` does to the network's [-1, 1] (fixed range: blockwise
    predictions must not depend on a tile's own statistics)."""
    gain = 2 / (intensity.high - intensity.low)
    steps = [{"id": "scale_linear", "kwargs": {"gain": gain, "offset": -1 - intensity.low * gain}}]
    if intensity.clip:
        steps.append({"id": "clip", "kwargs": {"min": -1.0, "max": 1.0}})
    return steps


def _cover(raw: np.ndarray, probabilities: np.ndarray) -> bytes:
    """PNG: the centre slice of the test input's output region beside the model's probabilities there."""
    import imageio.v3 as iio

    z = probabilities.shape[0] // 2
    offset = [(r - p) // 2 for r, p in zip(raw.shape, probabilities.shape)]
    image = raw[offset[0] + z][tuple(slice(o, o + p) for o, p in zip(offset[1:], probabilities.shape[1:]))]
    low, high = float(image.min()), float(image.max())
    gray = ((image - low) / (high - low or 1) * 255).astype(np.uint8)
    panel = np.concatenate([gray, (probabilities[z] * 255).round().astype(np.uint8)], axis=1)
    scale = max(1, 256 // panel.shape[0])
    return iio.imwrite("<bytes>", np.kron(panel, np.ones((scale, scale), np.uint8)), extension=".png")


def _readme(name: str, state: dict, input_shape: Triple, context: Triple, license: str) -> str:
    network = NetworkConfig.model_validate(state["network"])
    return (
        f"# {name}\n\nA 3D U-Net of incasem-like (valid convolutions) segmenting "
        f"{state.get('organelle') or 'one organelle'} in volume EM.\n\n"
        f"- Input: one channel, axes b c z y x, {' x '.join(map(str, input_shape))} voxels of "
        f"{' x '.join(f'{v:g}' for v in state.get('voxel_size') or [])} nm, {checkpoint_rule(state).text()}.\n"
        f"- Output: the foreground probability (sigmoid of the logit), {context} voxels less per side (the context "
        f"the valid convolutions use up).\n- Threshold: {state.get('threshold') or 0.5:g}.\n"
        f"- Network: {network.architecture()}.\n- Training data licence: {license}.\n\n"
        "Predict a whole volume blockwise with `incasem-like predict --checkpoint PACKAGE.zip`.\n"
    )


def export_package(
    checkpoint: str | Path,
    out: Path,
    test_raw: np.ndarray,
    voxel_size: tuple[float, float, float],
    name: str,
    license: str,
) -> Path:
    """A bioimage.io model package (zip, written atomically) of `checkpoint`: the weights as a state dict of
    `incasem_like.nn.model.unet3d` and as TorchScript, axes b c z y x with the voxel size, the normalization as
    preprocessing and a sigmoid, the context as the output's offset, the threshold, the checkpoint's content
    (`config.incasem_like`), test tensors the model makes from the centre of `test_raw`, a cover, citations and
    `license` (the training data's)."""
    model, state = model_from_checkpoint(checkpoint)
    network = model.config
    input_shape = export_shape(network)
    output_shape = network.output_shape(input_shape)
    context = triple((i - o) // 2 for i, o in zip(input_shape, output_shape))
    if any(t < i for t, i in zip(test_raw.shape, input_shape)):
        raise ValueError(f"test raw {test_raw.shape} is smaller than the exported input shape {input_shape}")
    rule_range = checkpoint_rule(state).range_of_array(test_raw, "the test raw")
    raw, probabilities = _test_tensors(model, test_raw, input_shape, rule_range)
    version = torch.__version__.split("+")[0]
    space = [
        {"type": "space", "id": axis, "unit": "nanometer", "scale": float(v)} for axis, v in zip("zyx", voxel_size)
    ]
    rdf = {
        "type": "model",
        "format_version": "0.5.14",
        "name": name,
        "description": f"3D U-Net for {state.get('organelle') or 'organelle'} segmentation in volume EM (incasem-like)",
        "authors": [{"name": "incasem-like"}],
        "cite": CITATIONS,
        "license": license,
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "tags": ["3d", "electron-microscopy", "semantic-segmentation", "unet", str(state.get("organelle") or "")],
        "inputs": [
            {
                "id": "raw",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]}]
                + [{**axis, "size": size} for axis, size in zip(space, input_shape)],
                "test_tensor": {"source": "test_input.npy"},
                "data": {"type": "float32"},
                "preprocessing": _preprocessing(rule_range),
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["foreground"]}]
                + [
                    {**axis, "size": {"tensor_id": "raw", "axis_id": axis["id"], "offset": -2 * c}}
                    for axis, c in zip(space, context)
                ],
                "test_tensor": {"source": "test_output.npy"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "pytorch_version": version,
                "architecture": {
                    "callable": "unet3d",
                    "import_from": "incasem_like.nn.model",
                    "kwargs": network.architecture(),
                },
            },
            "torchscript": {"source": "weights.torchscript", "pytorch_version": version},
        },
        "config": {
            CONFIG_KEY: {key: value for key, value in state.items() if key not in ("model", "optimizer")}
            | {"context": list(context)},
        },
    }
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder)
        export_torchscript(model, input_shape, files / "weights.torchscript")
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        contents = {
            "rdf.yaml": yaml.safe_dump(rdf, sort_keys=False).encode(),
            "README.md": _readme(name, state, input_shape, context, license).encode(),
            "cover.png": _cover(raw.astype(np.float32), probabilities[0, 0]),
            "weights.pt": buffer.getvalue(),
            "weights.torchscript": (files / "weights.torchscript").read_bytes(),
            "test_input.npy": _npy(raw.astype(np.float32)[None, None]),
            "test_output.npy": _npy(probabilities.astype(np.float32)),
        }
    with atomic_file(out) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in contents.items():
            archive.writestr(member, data)
    return out


def _test_tensors(
    model: UNet3D, test_raw: np.ndarray, input_shape: Triple, intensity: IntensityRange
) -> tuple[np.ndarray, np.ndarray]:
    """The test input (a crop of `test_raw`'s middle z, of 9 on a 3 x 3 grid in y and x: the one where the model
    sees the most foreground, so the test output is not all background) and the model's probabilities for it."""
    z = (test_raw.shape[0] - input_shape[0]) // 2
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for fy, fx in itertools.product((0.25, 0.5, 0.75), repeat=2):
        y, x = (int((t - i) * f) for t, i, f in zip(test_raw.shape[1:], input_shape[1:], (fy, fx)))
        raw = test_raw[z : z + input_shape[0], y : y + input_shape[1], x : x + input_shape[2]]
        with torch.no_grad():
            logits = model(torch.from_numpy(normalize(raw, intensity))[None, None]).numpy()
        probabilities = 1 / (1 + np.exp(-logits))
        if best is None or probabilities.mean() > best[0]:
            best = (float(probabilities.mean()), raw, probabilities)
    assert best is not None
    return best[1], best[2]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
