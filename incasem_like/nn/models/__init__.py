"""Models shipped with the package (float16 weights; see README.md here for how each was trained)."""

from importlib.resources import files
from pathlib import Path

from incasem_like.core.errors import UserError

#: organelle -> file of its bundled model
BUNDLED = {"mito": "mito_lucchi_cpu.pt"}
#: `--checkpoint bundled:mito` names the bundled model of an organelle
BUNDLED_PREFIX = "bundled:"
#: `incasem:PATH` (an incasem checkpoint) and `bioimageio:PATH` (a bioimage.io package) name files read as such
FORMAT_PREFIXES = ("incasem:", "bioimageio:")


def bundled_model(organelle: str) -> Path:
    """Path of the bundled checkpoint for `organelle`."""
    if organelle not in BUNDLED:
        raise UserError(
            f"no bundled model for '{organelle}' (bundled: {', '.join(BUNDLED)}); train one with incasem-like train"
        )
    return Path(str(files("incasem_like.nn.models") / BUNDLED[organelle]))


def checkpoint_location(spec: str) -> Path:
    """`bundled:NAME` -> the bundled model's file; `incasem:PATH`, `bioimageio:PATH` -> PATH (its content says
    what it is); anything else is a path (a checkpoint file, a bioimage.io package or a run folder)."""
    if spec.startswith(BUNDLED_PREFIX):
        return bundled_model(spec.removeprefix(BUNDLED_PREFIX))
    for prefix in FORMAT_PREFIXES:
        if spec.startswith(prefix):
            return Path(spec.removeprefix(prefix))
    return Path(spec)
