"""Models shipped with the package (float16 weights; see README.md here for how each was trained)."""

from importlib.resources import files
from pathlib import Path

from incasem_like.errors import UserError

#: organelle -> file of its bundled model
BUNDLED = {"mito": "mito_lucchi_cpu.pt"}


def bundled_model(organelle: str) -> Path:
    """Path of the bundled checkpoint for `organelle`."""
    if organelle not in BUNDLED:
        raise UserError(
            f"no bundled model for '{organelle}' (bundled: {', '.join(BUNDLED)}); train one with incasem-like train"
        )
    return Path(str(files("incasem_like") / "models" / BUNDLED[organelle]))
