"""Atomic training checkpoints: model + optimizer + iteration + the network they belong to."""

import os
import re
from pathlib import Path

import torch

from incasem_like.errors import UserError
from incasem_like.model import NetworkConfig, UNet3D

FORMAT = "incasem-like checkpoint 1"
ARCHITECTURE_KEYS = ("feature_maps", "feature_map_factor", "downsamplings")
_NAME = re.compile(r"iteration_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / "checkpoints" / f"iteration_{iteration:08d}.pt"


def save_checkpoint(
    run_dir: Path, model: UNet3D, optimizer: torch.optim.Optimizer | None, iteration: int, organelle: str
) -> Path:
    """Write iteration's checkpoint (temporary file, then rename: never a half-written checkpoint)."""
    path = checkpoint_path(run_dir, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "organelle": organelle,
        "iteration": iteration,
        "network": model.config.model_dump(mode="json"),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    temporary = path.with_suffix(".pt.partial")
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """Iteration -> checkpoint file of a run, in order."""
    found = {}
    for path in (run_dir / "checkpoints").glob("iteration_*.pt"):
        match = _NAME.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def load_checkpoint(path: str | Path, network: NetworkConfig | None = None) -> dict:
    """A checkpoint's content (weights_only); UserError if unreadable or if it does not fit `network`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for foreign or damaged files
        raise UserError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error})".splitlines()[0]
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an incasem-like checkpoint (no '{FORMAT}' marker)")
    if network is not None:
        theirs = {key: state["network"][key] for key in ARCHITECTURE_KEYS}
        ours = {key: getattr(network, key) for key in ARCHITECTURE_KEYS}
        if theirs != ours:
            raise UserError(
                f"{path}: trained with network {theirs}, but the config asks for {ours}; "
                "set the config's network to the checkpoint's architecture"
            )
    return state
