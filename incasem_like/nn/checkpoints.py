"""Atomic training checkpoints: model + optimizer + iteration + the network and voxel size they belong to."""

import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import ValidationError

from incasem_like.core.errors import UserError
from incasem_like.core.files import atomic_file
from incasem_like.nn.incasem import incasem_checkpoint, is_incasem_state
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.nn.models import checkpoint_location
from incasem_like.nn.packages import FOREIGN_KEY, is_package, package_checkpoint, package_model

FORMAT = "incasem-like checkpoint 1"
_NAME = re.compile(r"iteration_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / "checkpoints" / f"iteration_{iteration:08d}.pt"


def save_checkpoint(
    run_dir: Path,
    model: UNet3D,
    optimizer: torch.optim.Optimizer | None,
    iteration: int,
    organelle: str,
    voxel_size_nm: Sequence[float],
    **extra,
) -> Path:
    """Write iteration's checkpoint (temporary file, then rename: never a half-written checkpoint); `extra` keys
    are stored too (`run_seconds`: the run's training time up to it over all its invocations; `preprocessing`:
    what the training raw data went through, e.g. CLAHE)."""
    path = checkpoint_path(run_dir, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "organelle": organelle,
        "iteration": iteration,
        "voxel_size": [float(v) for v in voxel_size_nm],  # nm (older checkpoints: integers of nm)
        "network": model.config.model_dump(mode="json"),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        **extra,
    }
    _save_atomically(state, path)
    return path


def _save_atomically(state: dict, path: Path) -> None:
    """`torch.save` through `atomic_file`: a crash or kill leaves the previous checkpoint or the new one."""
    with atomic_file(path) as file:
        torch.save(state, file)


def export_weights(
    checkpoint: str | Path,
    out: str | Path,
    provenance: dict,
    threshold: float | None = None,
    tta: str | None = None,
    clean_up: dict | None = None,
) -> Path:
    """A checkpoint's weights in float16 without optimizer state (a model to ship), with `provenance` attached and
    what `predict` should use by default: the probability threshold (e.g. the best of the validation sweep), the
    test-time augmentation and the clean-up (min_object_voxels, min_hole_voxels) it was chosen with."""
    state = load_checkpoint(checkpoint)
    state["threshold"] = threshold
    state["tta"] = tta
    state["clean_up"] = clean_up
    state["model"] = {
        name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state["model"].items()
    }
    state["optimizer"] = None
    state.pop("reconstruction", None)  # semi-supervised training's second decoder: prediction never uses it
    state["provenance"] = provenance
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(state, out)
    return out


def _network_of(path: str | Path, state: dict) -> NetworkConfig:
    try:
        return NetworkConfig.model_validate(state["network"])
    except (KeyError, TypeError, ValidationError) as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"{path}: describes no network this version knows ({reason}); use a checkpoint written by incasem-like "
            "train"
        ) from None


def model_from_checkpoint(path: str | Path) -> tuple[UNet3D, dict]:
    """The network a checkpoint describes, with its weights in float32 (batch-norm counters as they are), and the
    checkpoint's content (another tool's bioimage.io package: its network run as ours, `nn.packages`)."""
    state = load_checkpoint(path)
    if FOREIGN_KEY in state:
        return package_model(Path(path), state), state
    network = _network_of(path, state)
    try:
        model = UNet3D(network)
        model.load_state_dict(
            {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state["model"].items()}
        )
    except (KeyError, ValidationError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"{path}: its weights do not fit the network it describes ({reason}); use a checkpoint written by "
            "incasem-like train"
        ) from None
    return model.eval(), state


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """Iteration -> checkpoint file of a run, in order."""
    found = {}
    for path in (run_dir / "checkpoints").glob("iteration_*.pt"):
        match = _NAME.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def resolve_checkpoint(spec: str | Path) -> Path:
    """The checkpoint file `spec` names: `bundled:NAME` (a model shipped with the package), the folder of a finished
    train/finetune run (its best checkpoint by validation F1, else its last) or a checkpoint file."""
    path = checkpoint_location(str(spec))
    if not path.is_dir():
        return path
    if not (path / "summary.json").is_file():
        raise UserError(
            f"{path}: a folder without summary.json, so no finished training run; give a checkpoint file or the "
            "folder of a finished run"
        )
    best = json.loads((path / "summary.json").read_text()).get("best")
    if best:  # named inside the run folder, wherever the run was started from
        return path / "checkpoints" / Path(best["checkpoint"]).name
    found = checkpoints(path)
    if not found:
        raise UserError(f"{path}: the run saved no checkpoint; train it further or give a checkpoint file")
    return list(found.values())[-1]


def load_checkpoint(path: str | Path, network: NetworkConfig | None = None) -> dict:
    """A checkpoint's content (weights_only); UserError if unreadable or if it does not fit `network`. An incasem
    checkpoint or a bioimage.io package of ours is read as the checkpoint it is, another tool's package as the
    content that runs it (`nn.incasem`, `nn.packages`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    if is_package(path):
        state = package_checkpoint(path)
        return _fits(path, state, network)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"unsupported GLOBAL:? (?:GLOBAL )?([\w.]+)", str(error), re.IGNORECASE)
        if unsafe:
            raise UserError(
                f"{path}: refused: it would load the Python object {unsafe[1]}, and loading objects other than "
                "tensors and plain values could run code; use a checkpoint written by incasem-like train"
            ) from None
        # torch wraps the unpickler's complaint in advice (its second-to-last line is the complaint itself)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-2] if len(lines) > 2 else " ".join(lines)
        raise UserError(f"{path}: not a readable checkpoint (UnpicklingError: {reason})") from None
    except Exception as error:  # torch raises many kinds for foreign or damaged files
        raise UserError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error})".splitlines()[0]
        ) from None
    if is_incasem_state(state):
        state = {"format": FORMAT, **incasem_checkpoint(path, state)}
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an incasem-like checkpoint (no '{FORMAT}' marker)")
    return _fits(path, state, network)


def _fits(path: Path, state: dict, network: NetworkConfig | None) -> dict:
    """`state`, if its network is `network`'s architecture (or no network is asked for)."""
    if network is not None and FOREIGN_KEY in state:
        raise UserError(
            f"{path}: a bioimage.io package of another tool, which incasem-like runs but does not train; start from a "
            "checkpoint of incasem-like"
        )
    if network is not None:
        theirs, ours = _network_of(path, state).architecture(), network.architecture()
        if theirs != ours:
            differing = {key: theirs[key] for key in theirs if theirs[key] != ours.get(key)}
            asked = {key: ours.get(key) for key in differing}
            raise UserError(
                f"{path}: trained with network {differing}, but the config asks for {asked}; "
                "set the config's network to the checkpoint's architecture"
            )
    return state
