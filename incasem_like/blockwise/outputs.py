"""What a blockwise stage writes: datasets, pyramid levels of a dataset, folders of files.

The runner treats every output alike: it locks each one (`lock`), keeps on it the bookkeeping of the run that
writes it (`meta`: the run's fingerprint, whether it is complete), removes what it holds to start over (`remove`,
never the lock), and keeps the run's own state (spec, progress, logs, summary) in the first output's `run_dir`,
a hidden folder beside the data that readers and the viewer skip.
"""

import json
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incasem_like.blockwise.lock import LOCK, remove_all_but_lock
from incasem_like.core.errors import UserError
from incasem_like.core.files import write_atomically
from incasem_like.store.datasets import FULL_RESOLUTION, RUN_DIR, DatasetPath, dataset_meta, update_dataset_meta


class StageOutput(ABC):
    """One thing a stage writes, as the runner sees it."""

    @property
    @abstractmethod
    def run_dir(self) -> Path:
        """The hidden folder of the run that writes this output (its lock, and for a stage's first output the
        run's state)."""

    @property
    def lock(self) -> Path:
        return self.run_dir / LOCK

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything is there (a bare run folder, made by taking the lock, does not count)."""

    @abstractmethod
    def meta(self) -> dict[str, Any]:
        """The bookkeeping of the run that wrote it (empty when none did)."""

    @abstractmethod
    def update_meta(self, **values: Any) -> None: ...

    @abstractmethod
    def remove(self) -> None:
        """Delete what the output holds, keeping its lock, so a run can start it over."""

    def check_replaceable(self) -> None:
        """`UserError` if what is there must not be removed even when told to overwrite it (checked before any
        lock is taken, so a refusal touches nothing)."""

    def complete(self) -> bool:
        return bool(self.meta().get("complete"))


@dataclass(frozen=True)
class DatasetOutput(StageOutput):
    """An OME-Zarr dataset; bookkeeping in its group's attributes."""

    path: DatasetPath

    @classmethod
    def parse(cls, text: str | Path) -> "DatasetOutput":
        return cls(DatasetPath.parse(text))

    @property
    def run_dir(self) -> Path:
        return self.path.group_path / RUN_DIR

    def exists(self) -> bool:
        return self.path.exists()

    def meta(self) -> dict[str, Any]:
        try:
            return dataset_meta(self.path)
        except (FileNotFoundError, ValueError):  # nothing there, or not a zarr group
            return {}

    def update_meta(self, **values: Any) -> None:
        update_dataset_meta(self.path, **values)

    def check_replaceable(self) -> None:
        """Only a dataset this product wrote is replaced: never a group holding datasets, a folder that is no
        dataset, or a dataset of another tool."""
        group = self.path.group_path
        inner = [entry for entry in group.rglob("zarr.json") if entry.parent != group] if group.is_dir() else []
        if any((entry.parent / FULL_RESOLUTION).is_dir() for entry in inner):
            raise UserError(
                f"{self.path} holds datasets; --overwrite replaces one dataset, never a group of them: "
                "name the dataset to write"
            )
        if not self.path.array_path.is_dir() or not self.meta():
            raise UserError(
                f"{self.path} exists and is not a dataset incasem-like wrote; --overwrite replaces only those: "
                "remove it yourself or choose another output"
            )

    def remove(self) -> None:
        if self.exists():
            self.check_replaceable()
        if self.path.group_path.is_dir():
            remove_all_but_lock(self.path.group_path, self.lock)

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class LevelOutput(StageOutput):
    """Array `s{level}` of a dataset's multiscale group (a pyramid level); bookkeeping under `levels` in the
    group's attributes."""

    path: DatasetPath
    level: int

    @property
    def array(self) -> Path:
        return self.path.group_path / f"s{self.level}"

    @property
    def run_dir(self) -> Path:
        return self.path.group_path / RUN_DIR / f"s{self.level}"

    def exists(self) -> bool:
        return self.array.exists()

    def meta(self) -> dict[str, Any]:
        return dict(dataset_meta(self.path).get("levels", {}).get(f"s{self.level}", {}))

    def update_meta(self, **values: Any) -> None:
        levels = dict(dataset_meta(self.path).get("levels", {}))
        levels[f"s{self.level}"] = {**levels.get(f"s{self.level}", {}), **values}
        update_dataset_meta(self.path, levels=levels)

    def remove(self) -> None:
        shutil.rmtree(self.array, ignore_errors=True)
        levels = {key: value for key, value in dataset_meta(self.path).get("levels", {}).items()}
        if levels.pop(f"s{self.level}", None) is not None:
            update_dataset_meta(self.path, levels=levels)
        if self.run_dir.is_dir():
            remove_all_but_lock(self.run_dir, self.lock)

    def __str__(self) -> str:
        return f"{self.path}/s{self.level}"


@dataclass(frozen=True)
class FolderOutput(StageOutput):
    """A folder of files (meshes); bookkeeping in `.incasem_run/meta.json` inside it. Only a folder with that file
    (one this tool wrote) is ever removed."""

    folder: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / RUN_DIR

    def exists(self) -> bool:
        if not self.folder.is_dir():
            return self.folder.exists()
        return any(entry.name != RUN_DIR for entry in self.folder.iterdir()) or (self.run_dir / "meta.json").exists()

    def meta(self) -> dict[str, Any]:
        path = self.run_dir / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def update_meta(self, **values: Any) -> None:
        write_atomically(self.run_dir / "meta.json", json.dumps({**self.meta(), **values}, indent=2))

    def check_replaceable(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder} exists and is not a folder; choose a folder name")
        if self.exists() and not self.meta():
            raise UserError(
                f"{self.folder} is a folder incasem-like did not write; --overwrite replaces only folders it wrote, "
                "choose a new folder"
            )

    def remove(self) -> None:
        self.check_replaceable()
        if self.folder.is_dir():
            remove_all_but_lock(self.folder, self.lock)

    def __str__(self) -> str:
        return str(self.folder)
