"""bioimage.io model packages read as checkpoints: a zip with `rdf.yaml`, validated by `bioimageio.spec`.

Ours (`nn.export` writes them): `config.incasem_like` holds what an incasem-like checkpoint records besides the
weights (network, normalization, voxel size, threshold, clean-up), and the `pytorch_state_dict` weights are our
U-Net's.

Another tool's: a 3D model of one input channel and one foreground output channel with TorchScript weights runs
as our U-Net would (`PackagedModel`), on passes of the sizes its input axes allow (`min` + k `step`, or a fixed
size), its output `offset` and `halo` as the context (the halo is cropped), its `step` as the grid it is
translation-equivariant on, the voxel size from its input axes' `scale` and `unit` (predict compares it with the
raw's). Its preprocessing: a `scale_range` first is computed over the whole raw dataset, once (bioimage.io
computes it over the sample given: the whole volume), values beyond the percentiles not clipped, exactly as the
package maps them to [0, 1] (up to its `eps`, 1e-6 of the range); then `scale_linear`, `clip`,
`fixed_zero_mean_unit_variance`, `binarize`, `sigmoid` as given. Its postprocessing: fixed elementwise steps, then
a `sigmoid` (predict applies it to the values before it, which are therefore the logits) or, without one, output
probabilities declared by `data.range` [0, 1] (their logits are passed on, and predict's sigmoid gives them back);
a `binarize` of the probabilities sets the threshold. Refused in one line naming the package, the rdf key and the
fix: 2D models, several input channels, several output channels, several tensors, statistics of each tile
(`zero_mean_unit_variance`, percentiles per slice or of `clip`), other operations, weights other than
TorchScript (no code from a package is run).
"""

import io
import math
import os
import warnings
import zipfile
from pathlib import Path

import torch
import yaml
from torch import nn

from incasem_like.core.bounds import VoxelOffsets
from incasem_like.core.errors import UserError
from incasem_like.nn.model import NetworkConfig, Triple, UNet3D, _center_crop, triple
from incasem_like.nn.normalization import NormalizationRule

#: names bioimage.io gives a package's description
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: `config` key of the checkpoint content a package of ours carries
CONFIG_KEY = "incasem_like"
#: checkpoint content key of another tool's package: how `PackagedModel` runs it
FOREIGN_KEY = "bioimageio_package"
#: nanometres per unit of a bioimage.io space axis
NM_PER_UNIT = {"angstrom": 0.1, "nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6, "meter": 1e9}
#: operations with fixed parameters on each value, which `PackagedModel` applies: their arguments' defaults
ELEMENTWISE: dict[str, dict[str, float | None]] = {
    "scale_linear": {"gain": 1.0, "offset": 0.0},
    "clip": {"min": -math.inf, "max": math.inf},
    "fixed_zero_mean_unit_variance": {"mean": None, "std": None},
    "binarize": {"threshold": None},
    "sigmoid": {},
}
#: the axes of the tensors our prediction hands the network and expects back
OUR_AXES = ("batch", "channel", "z", "y", "x")
SPACE = ("z", "y", "x")
Offsets = tuple[int, int, int]  # sizes per axis that may be 0 (a fixed input's step, a shrink)


def is_package(path: Path) -> bool:
    """Whether `path` is a zip holding a bioimage.io description (a torch checkpoint is a zip without one)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name in RDF_NAMES for name in archive.namelist())


def validation_error(path: Path) -> str | None:
    """The first error `bioimageio.spec` finds in the package's description (offline: no file is fetched), or
    None if it validates."""
    os.environ.setdefault("BIOIMAGEIO_CACHE_PATH", str(Path.home() / ".cache" / "incasem-like" / "bioimageio"))
    from bioimageio.spec import InvalidDescr, load_description

    description = load_description(path, perform_io_checks=False)
    if not isinstance(description, InvalidDescr):
        return None
    errors = description.validation_summary.details[-1].errors or [
        error for detail in description.validation_summary.details for error in detail.errors
    ]
    if not errors:
        return "invalid"
    loc = ".".join(map(str, errors[0].loc)) or "rdf"
    return f"{loc}: {errors[0].msg}".splitlines()[0]


def package_checkpoint(path: Path) -> dict:
    """A package's content as an incasem-like checkpoint's (see `nn.checkpoints`; another tool's under
    `FOREIGN_KEY`, without weights); UserError naming the package, the key and the fix where it does not
    validate or cannot run."""
    error = validation_error(path)
    if error is not None:
        raise UserError(
            f"{path}: its rdf.yaml does not validate as a bioimage.io model ({error}); fix that key or re-export "
            "the package"
        )
    with zipfile.ZipFile(path) as archive:
        rdf_name = next(name for name in archive.namelist() if name in RDF_NAMES)
        rdf = yaml.safe_load(archive.read(rdf_name))
        state = (rdf.get("config") or {}).get(CONFIG_KEY)
        if not isinstance(state, dict):
            return _Foreign(path, rdf).state()
        source = (rdf["weights"].get("pytorch_state_dict") or {}).get("source")
        if source not in archive.namelist():
            raise UserError(f"{path}: weights.pytorch_state_dict.source {source!r} is not in the package; re-export it")
        weights = torch.load(io.BytesIO(archive.read(source)), map_location="cpu", weights_only=True)
    return {**state, "model": weights, "optimizer": None}


class ForeignNetwork(NetworkConfig):
    """Another tool's network by its geometry: inputs of `minimum` + k `step` voxels per axis (`step` 0: `minimum`
    only) give outputs `shrink` smaller, centred. Seen as our U-Net is: one level whose kernel spans the context
    and whose factor is `step` (the shifts it is equivariant for)."""

    minimum: Triple
    step: VoxelOffsets
    shrink: VoxelOffsets

    def kernels(self) -> list[Triple]:
        return [triple(s + 1 for s in self.shrink)]

    def factors(self) -> list[Triple]:
        return [triple(max(s, 1) for s in self.step)]

    def output_shape(self, input_shape: tuple[int, ...] | None = None) -> Triple:
        shape = tuple(input_shape or self.input_shape)
        outputs = [self._output_edge(edge, axis) for axis, edge in enumerate(shape)]
        for axis, (edge, output) in enumerate(zip(shape, outputs)):
            if output is None:
                raise UserError(
                    f"network input edge {edge} along {'zyx'[axis]} does not fit the package's model, which takes "
                    f"{self._sizes(axis)}"
                )
        return triple(outputs)

    def input_edge_for(self, output_at_least: int, axis: int = 0) -> int:
        minimum, step, shrink = self.minimum[axis], self.step[axis], self.shrink[axis]
        if step == 0 and minimum - shrink < output_at_least:
            raise UserError(
                f"a pass's output of {output_at_least} voxels along {'zyx'[axis]} exceeds the {minimum - shrink} the "
                f"package's model gives for its fixed input of {minimum}; use --step {minimum - shrink} or less"
            )
        more = max(0, output_at_least + shrink - minimum)
        return minimum + (math.ceil(more / step) * step if step else 0)

    def _output_edge(self, edge: int, axis: int) -> int | None:
        minimum, step, shrink = self.minimum[axis], self.step[axis], self.shrink[axis]
        valid = edge == minimum or (step > 0 and edge > minimum and (edge - minimum) % step == 0)
        return edge - shrink if valid and edge > shrink else None

    def _sizes(self, axis: int) -> str:
        minimum, step = self.minimum[axis], self.step[axis]
        return f"{minimum} + a multiple of {step}" if step else f"{minimum} only"


class PackagedModel(UNet3D):
    """Another tool's TorchScript network run as our U-Net (prediction only): normalized input (N, 1, z, y, x)
    by the rule `_Foreign` chose -> the package's preprocessing, its network on each item alone (a traced network
    may fix the batch size), in its axes, the halo cropped -> its postprocessing up to the sigmoid -> foreground
    logits (N, 1, z', y', x')."""

    def __init__(self, network: ForeignNetwork, module: torch.jit.ScriptModule, description: dict):
        nn.Module.__init__(self)
        self.config, self.module, self.description = network, module, description

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        values = _elementwise(self.description["preprocessing"], (raw.float() + 1) / 2)  # the rule's [0, 1]
        outputs = torch.cat([self._run(item) for item in values.split(1)])
        outputs = _center_crop(outputs, self.config.output_shape(tuple(raw.shape[-3:])))
        outputs = _elementwise(self.description["postprocessing"], outputs)
        return outputs if self.description["gives"] == "logits" else torch.logit(outputs.clamp(0, 1))

    def _run(self, item: torch.Tensor) -> torch.Tensor:
        result = self.module(_to_axes(item, OUR_AXES, self.description["input_axes"]))
        result = result[0] if isinstance(result, tuple | list) else result
        return _to_axes(result.float(), self.description["output_axes"], OUR_AXES)


def package_model(path: Path, state: dict) -> PackagedModel:
    """The network of another tool's package whose content `package_checkpoint` gave as `state`."""
    description = state[FOREIGN_KEY]
    source = description["weights"]
    with zipfile.ZipFile(path) as archive:
        if source not in archive.namelist():
            raise UserError(f"{path}: weights.torchscript.source {source!r} is not in the package; add the file")
        data = archive.read(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but packages hold TorchScript
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"{path}: weights.torchscript.source {source!r} is no TorchScript ({reason}); re-export it"
        ) from None
    for parameter in module.parameters():
        parameter.requires_grad_(False)  # else moving a script module's parameters warns about their gradients
    return PackagedModel(ForeignNetwork(**description["network"]), module, description).eval()


def _to_axes(tensor: torch.Tensor, have: tuple[str, ...] | list[str], want: tuple[str, ...] | list[str]):
    """`tensor` with axes `have` -> axes `want`: permuted, axes of one element dropped or added."""
    kept = [axis for axis in have if axis in want]
    tensor = tensor.reshape([size for axis, size in zip(have, tensor.shape) if axis in want])
    tensor = tensor.permute([kept.index(axis) for axis in want if axis in kept])
    order = [axis for axis in want if axis in kept]
    return tensor.reshape([tensor.shape[order.index(axis)] if axis in order else 1 for axis in want])


def _elementwise(steps: list[tuple[str, dict]], values: torch.Tensor) -> torch.Tensor:
    """`values` through bioimage.io's elementwise operations `steps` (ids of `ELEMENTWISE`), in float32."""
    for name, kwargs in steps:
        if name == "scale_linear":
            values = values * kwargs["gain"] + kwargs["offset"]
        elif name == "clip":
            values = values.clamp(kwargs["min"], kwargs["max"])
        elif name == "fixed_zero_mean_unit_variance":
            values = (values - kwargs["mean"]) / (kwargs["std"] + 1e-6)  # bioimageio.core's epsilon
        elif name == "binarize":
            values = (values > kwargs["threshold"]).float()
        else:
            values = torch.sigmoid(values)
    return values


class _Foreign:
    """Another tool's validated rdf -> the checkpoint content `package_model` runs, or a one-line refusal."""

    def __init__(self, path: Path, rdf: dict):
        self.path, self.rdf = path, rdf

    def refuse(self, key: str, problem: str, fix: str) -> UserError:
        return UserError(f"{self.path}: {key} {problem}; {fix}")

    def state(self) -> dict:
        weights, inputs, outputs = self.rdf["weights"], self.rdf["inputs"], self.rdf["outputs"]
        if "torchscript" not in weights:
            raise self.refuse(
                "weights",
                f"are {', '.join(weights)}",
                "incasem-like runs another tool's package from TorchScript weights only (it runs no code of a "
                "package and no other framework): add torchscript weights",
            )
        for key, tensors in (("inputs", inputs), ("outputs", outputs)):
            if len(tensors) != 1:
                raise self.refuse(
                    key, f"lists {len(tensors)} tensors", "incasem-like runs packages of one raw input and one output"
                )
        tensor, output = inputs[0], outputs[0]
        input_axes, output_axes = self.axes(tensor, "inputs[0]"), self.axes(output, "outputs[0]")
        if (tensor.get("data") or {}).get("type", "float32") != "float32":
            raise self.refuse(
                "inputs[0].data.type", tensor["data"]["type"], "incasem-like feeds float32: use a float32 package"
            )
        rule, preprocessing = self.preprocessing(tensor)
        gives, postprocessing, threshold = self.postprocessing(output)
        network = self.network(tensor, output)
        return {
            "voxel_size": self.voxel_size(tensor),
            "raw_normalization": rule.model_dump(mode="json"),
            "threshold": threshold,
            "provenance": {"bioimageio": self.rdf.get("id") or self.rdf.get("name")},
            FOREIGN_KEY: {
                "weights": weights["torchscript"]["source"],
                "network": network.model_dump(),
                "input_axes": input_axes,
                "output_axes": output_axes,
                "preprocessing": preprocessing,
                "postprocessing": postprocessing,
                "gives": gives,
            },
        }

    def axes(self, tensor: dict, key: str) -> list[str]:
        """The tensor's axis ids, checked: batch, one channel, space z, y and x."""
        ids = [axis.get("id") or axis["type"] for axis in tensor["axes"]]
        for axis, id in zip(tensor["axes"], ids):
            if axis["type"] == "channel" and len(axis["channel_names"]) != 1:
                names = ", ".join(map(str, axis["channel_names"]))
                what = "feeds one raw channel" if key.startswith("inputs") else "predicts one foreground channel"
                raise self.refuse(
                    f"{key}.axes.{id}",
                    f"has {len(axis['channel_names'])} channels ({names})",
                    f"incasem-like {what}: use a package with one",
                )
            if axis["type"] not in ("batch", "channel", "space"):
                raise self.refuse(
                    f"{key}.axes.{id}", f"is a {axis['type']} axis", "incasem-like runs 3D models (z, y, x)"
                )
        space = [id for axis, id in zip(tensor["axes"], ids) if axis["type"] == "space"]
        if sorted(space) != sorted(SPACE):
            raise self.refuse(
                f"{key}.axes",
                f"have the space axes {', '.join(space)}, not z, y and x (a {len(space)}D model)",
                "incasem-like predicts volumes with 3D models: use a 3D package",
            )
        return ids

    def network(self, tensor: dict, output: dict) -> ForeignNetwork:
        inputs = {axis.get("id"): axis for axis in tensor["axes"]}
        outputs = {axis.get("id"): axis for axis in output["axes"]}
        minimum, step, shrink = [], [], []
        for id in SPACE:
            size = inputs[id]["size"]
            if isinstance(size, int):
                low, every = size, 0
            elif "min" in size:
                low, every = size["min"], size.get("step", 1)
            else:
                raise self.refuse(f"inputs[0].axes.{id}.size", "refers to another tensor", "give its min and step")
            out = outputs[id]
            if out.get("scale", 1.0) != inputs[id].get("scale", 1.0):
                raise self.refuse(
                    f"outputs[0].axes.{id}.scale",
                    "differs from the input's (a resampled output)",
                    "incasem-like writes the output on the raw's grid: use a package whose output is",
                )
            if isinstance(out["size"], int) and every == 0:
                offset = out["size"] - low
            elif isinstance(out["size"], dict) and out["size"].get("axis_id") == id:
                offset = out["size"].get("offset", 0)
            else:
                raise self.refuse(
                    f"outputs[0].axes.{id}.size",
                    "is not the input's along it",
                    "refer to inputs[0]'s axis with an offset",
                )
            lost = 2 * out.get("halo", 0) - offset
            if lost < 0 or lost % 2:
                raise self.refuse(
                    f"outputs[0].axes.{id}",
                    f"offset {offset} and halo {out.get('halo', 0)} give no output centred on the input",
                    "describe the output as the input less the same number of voxels per side",
                )
            minimum.append(low)
            step.append(every)
            shrink.append(lost)
        return ForeignNetwork(
            minimum=triple(minimum), step=triple(step), shrink=triple(shrink), input_shape=triple(minimum)
        )

    def preprocessing(self, tensor: dict) -> tuple[NormalizationRule, list[tuple[str, dict]]]:
        """The normalization rule of the raw (a `scale_range` first: the dataset's percentiles; else the values
        themselves) and the elementwise steps after it."""
        steps = list(tensor.get("preprocessing") or [])
        first = steps[0] if steps else {}
        if first.get("id") != "scale_range":
            return NormalizationRule(mode="value_range", value_range=(0.0, 1.0), clip=False), self.steps(
                steps, 0, "inputs"
            )
        kwargs = first.get("kwargs") or {}
        key = "inputs[0].preprocessing[0].kwargs"
        missing = [axis for axis in SPACE if axis not in (kwargs.get("axes") or SPACE)]
        if missing:
            raise self.refuse(
                f"{key}.axes",
                f"leave out {', '.join(missing)}: percentiles per slice or line",
                "incasem-like computes them over the whole dataset: give axes including z, y and x",
            )
        if kwargs.get("reference_tensor") not in (None, tensor["id"]):
            raise self.refuse(f"{key}.reference_tensor", "names another tensor", "leave it out")
        percentiles = (kwargs.get("min_percentile", 0.0), kwargs.get("max_percentile", 100.0))
        rule = NormalizationRule(mode="percentiles", percentiles=percentiles, clip=False)
        return rule, self.steps(steps[1:], 1, "inputs")

    def postprocessing(self, output: dict) -> tuple[str, list[tuple[str, dict]], float | None]:
        """What the network's output is once the elementwise steps before the sigmoid (or all) are applied:
        `logits` or `probabilities`, and the threshold of a `binarize` at the end."""
        steps = [step for step in output.get("postprocessing") or [] if step["id"] != "ensure_dtype"]
        threshold = None
        if steps and steps[-1]["id"] == "binarize" and len(steps) > 1 and steps[-2]["id"] == "sigmoid":
            threshold = float(self.scalar(steps[-1].get("kwargs") or {}, "threshold", "outputs[0].postprocessing"))
            steps = steps[:-1]
        if steps and steps[-1]["id"] == "sigmoid":
            return "logits", self.steps(steps[:-1], 0, "outputs"), threshold
        if list((output.get("data") or {}).get("range") or []) != [0, 1]:
            raise self.refuse(
                "outputs[0]",
                "ends in no sigmoid postprocessing and declares no data.range [0, 1]",
                "incasem-like needs foreground probabilities: add the sigmoid or declare the range",
            )
        return "probabilities", self.steps(steps, 0, "outputs"), threshold

    def steps(self, steps: list[dict], start: int, tensor: str) -> list[tuple[str, dict]]:
        """Elementwise `steps` (from index `start` of the tensor's pre- or postprocessing) with scalar arguments."""
        kind = "preprocessing" if tensor == "inputs" else "postprocessing"
        checked = []
        for index, step in enumerate(steps, start):
            key, kwargs = f"{tensor}[0].{kind}[{index}]", step.get("kwargs") or {}
            name = step["id"]
            if name == "ensure_dtype":
                if kwargs.get("dtype") not in ("float32", "float64"):
                    raise self.refuse(f"{key}.kwargs.dtype", str(kwargs.get("dtype")), "incasem-like runs float32")
                continue
            if name == "zero_mean_unit_variance" or (
                name == "clip" and kwargs.keys() & {"min_percentile", "max_percentile"}
            ):
                raise self.refuse(
                    f"{key}.id",
                    f"{name} uses statistics of each tile, so a blockwise prediction would depend on the blocks",
                    "give fixed values (fixed_zero_mean_unit_variance, clip min and max) or a scale_range first",
                )
            if name not in ELEMENTWISE:
                raise self.refuse(
                    f"{key}.id",
                    f"{name} is not supported",
                    "incasem-like applies a scale_range first, then " + ", ".join(ELEMENTWISE),
                )
            arguments = ELEMENTWISE[name]
            checked.append((name, {arg: self.scalar(kwargs, arg, key, default) for arg, default in arguments.items()}))
        return checked

    def scalar(self, kwargs: dict, name: str, key: str, default: float | None = None) -> float:
        """A step's argument as one value (a list along the channel axis holds one)."""
        value = kwargs.get(name)
        value = default if value is None else value
        if isinstance(value, list):
            if len(value) != 1:
                raise self.refuse(f"{key}.kwargs.{name}", f"has {len(value)} values", "one channel takes one")
            value = value[0]
        assert value is not None  # the description validated: required arguments are there
        return float(value)

    def voxel_size(self, tensor: dict) -> list[float] | None:
        """The input's voxel size in nm, where its space axes give a length unit."""
        axes = {axis.get("id"): axis for axis in tensor["axes"]}
        units = [axes[id].get("unit") for id in SPACE]
        if not all(unit in NM_PER_UNIT for unit in units):
            return None
        return [float(axes[id].get("scale", 1.0)) * NM_PER_UNIT[unit] for id, unit in zip(SPACE, units)]
