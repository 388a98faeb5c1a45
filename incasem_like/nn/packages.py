"""bioimage.io model packages read as checkpoints: a zip with `rdf.yaml` (validated by `bioimageio.spec`) whose
`config.incasem_like` holds what an incasem-like checkpoint records besides the weights (network, normalization,
voxel size, threshold, clean-up) and whose `pytorch_state_dict` weights are our U-Net's (`nn.export` writes them).
"""

import io
import os
import zipfile
from pathlib import Path

import torch
import yaml

from incasem_like.core.errors import UserError

#: names bioimage.io gives a package's description
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: `config` key of the checkpoint content a package of ours carries
CONFIG_KEY = "incasem_like"


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
    """A package's content as an incasem-like checkpoint's (see `nn.checkpoints`); UserError naming the package,
    the key and the fix where it does not validate or is not one of ours."""
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
            frameworks = ", ".join(rdf.get("weights") or {}) or "none"
            raise UserError(
                f"{path}: config.{CONFIG_KEY} missing: a package of another tool ({rdf.get('name')!r}, weights "
                f"{frameworks}); incasem-like runs only its own U-Net's packages (incasem-like export-model); import "
                "the weights with incasem:PATH if it is an incasem checkpoint"
            )
        source = (rdf["weights"].get("pytorch_state_dict") or {}).get("source")
        if source not in archive.namelist():
            raise UserError(f"{path}: weights.pytorch_state_dict.source {source!r} is not in the package; re-export it")
        weights = torch.load(io.BytesIO(archive.read(source)), map_location="cpu", weights_only=True)
    return {**state, "model": weights, "optimizer": None}
