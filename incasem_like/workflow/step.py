"""What a pipeline stage is: one command's validated config that declares what it reads and what it writes.

A step (daisy's "a task is plain data", volara's one pydantic model per task) is a frozen pydantic model whose
`command` names the command it is: the discriminated union of `incasem_like.workflow.steps` turns a stage of a
pipeline file into one, and each command builds the same model from its command line. A step lists what it
`reads()` and `writes()` and runs with an `Execution`: how it runs (workers, cluster, overwrite, progress), never
what it writes. What a step leaves to run time (a model's recorded threshold, an organelle's label parameters) is
decided when it runs, from what it reads.

A step's fingerprint is its config as given plus the checksums of the files it is defined by (`identity`: a
checkpoint, a training config). `run_step` records it with each output once written (in a dataset's attributes,
beside a file or folder), so an output is up to date for a step when it is complete and records that step's
fingerprint (`stale`), wherever the command or the pipeline was run from.
"""

import hashlib
import json
import time
from abc import ABC, abstractmethod
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from incasem_like.blockwise.cluster import ClusterSettings, cluster_settings
from incasem_like.blockwise.launchers import Launcher
from incasem_like.blockwise.lock import RunLock
from incasem_like.blockwise.outputs import DatasetOutput
from incasem_like.blockwise.runner import run_stage
from incasem_like.blockwise.stage import BlockwiseStage
from incasem_like.core.bounds import STRICT
from incasem_like.core.errors import UserError
from incasem_like.core.files import write_atomically
from incasem_like.core.geometry import nm_text
from incasem_like.store.datasets import (
    DatasetPath,
    dataset_meta,
    is_complete,
    open_dataset,
    update_dataset_meta,
)

#: the key of a dataset's attributes, and the suffix of the file beside any other output, holding its step record
RECORD = "incasem_step"


@dataclass(frozen=True)
class Output:
    """What a step writes: a dataset (complete by its mark), or a file or folder (complete when it exists, or when
    `marker` inside it does)."""

    path: str
    dataset: bool = False
    marker: str | None = None

    def exists(self) -> bool:
        return Path(self.path).exists()

    def complete(self) -> bool:
        if self.dataset:
            path = DatasetPath.parse(self.path)
            return path.array_path.exists() and is_complete(path)
        return (Path(self.path) / self.marker).is_file() if self.marker else Path(self.path).exists()

    def record_file(self) -> Path:
        """Where the step record of a file or folder lives: beside it, hidden."""
        path = Path(self.path)
        return path.with_name(f".{path.name}.{RECORD}.json")

    def read_record(self) -> dict | None:
        """The record of the step that wrote this output (None if it has none)."""
        if self.dataset:
            return dataset_meta(DatasetPath.parse(self.path)).get(RECORD)
        path = self.record_file()
        return json.loads(path.read_text()) if path.is_file() else None

    def write_record(self, record: dict) -> None:
        if self.dataset:
            update_dataset_meta(DatasetPath.parse(self.path), **{RECORD: record})
        else:
            write_atomically(self.record_file(), json.dumps(record, indent=2) + "\n")


@dataclass(frozen=True)
class Execution:
    """How a step runs: worker processes (None: the step's default), the launcher that starts them (None:
    processes on this machine), reading/writing threads (None: the step's default), whether existing outputs are
    replaced, a training run resumed, and progress bars shown."""

    workers: int | None = None
    launcher: Launcher | None = None
    threads: int | None = None
    overwrite: bool = False
    resume: bool = False
    progress: bool = True

    def workers_or(self, default: int) -> int:
        """The workers asked for, else `default` (a bad number is the runner's to refuse)."""
        return default if self.workers is None else self.workers


class ExecutionSpec(BaseModel):
    """The execution keys of a pipeline stage (beside its step's fields): workers, threads and the cluster settings
    of `--cluster-config`'s file (the same keys)."""

    model_config = STRICT

    workers: Annotated[int, Field(ge=1, le=1024)] | None = None
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    cluster_config: str | None = None
    #: `cluster: slurm`, `gpus: 1`, ...: flat keys of the stage, gathered here and checked by `cluster_settings`
    cluster_settings: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather_cluster_settings(cls, data):
        if not isinstance(data, dict):
            return data
        settings = {key: data[key] for key in ClusterSettings.model_fields if key in data}
        return {**{k: v for k, v in data.items() if k not in settings}, "cluster_settings": settings}

    def execution(self, progress: bool = True, overwrite: bool = False, resume: bool = False) -> Execution:
        launcher = cluster_settings(self.cluster_settings, self.cluster_config).launcher()
        return Execution(self.workers, launcher, self.threads, overwrite, resume, progress)


#: keys of a pipeline stage that set how it runs, not what it writes
EXECUTION_KEYS = ("workers", "threads", "cluster_config", *ClusterSettings.model_fields)


class Step(BaseModel, ABC):
    """One command's config; subclasses set `command` (a literal: the union's discriminator) and the methods."""

    model_config = ConfigDict(**STRICT, frozen=True)

    command: str

    @model_validator(mode="before")
    @classmethod
    def _roi(cls, data):
        """`roi: [OZ, OY, OX, SZ, SY, SX]` (or those six numbers as one string) for `roi_offset` and `roi_shape`."""
        if not (isinstance(data, dict) and "roi" in data and "roi_offset" in cls.model_fields):
            return data
        data = dict(data)
        roi = data.pop("roi")
        if roi is None:
            return data
        values = roi.split() if isinstance(roi, str) else roi
        if not isinstance(values, list | tuple) or len(values) != 6:
            raise UserError(f"roi {roi!r}: give 6 numbers, OZ OY OX SZ SY SX in voxels")
        return {**data, "roi_offset": tuple(values[:3]), "roi_shape": tuple(values[3:])}

    @abstractmethod
    def reads(self) -> list[str]:
        """The datasets, files and folders the step reads."""

    @abstractmethod
    def writes(self) -> list[Output]:
        """Everything the step writes (none for a step that only shows or prints)."""

    @abstractmethod
    def run(self, execution: Execution) -> None:
        """Do the work, deciding what was left to run time, and print what was written."""

    def shown(self) -> str:
        """The output a summary names and `${STAGE.output}` stands for."""
        outputs = self.writes()
        return outputs[0].path if outputs else ""

    def identity(self) -> dict[str, str]:
        """Checksums of the files that define what the step writes beside its fields (a checkpoint, a config)."""
        return {}

    def fingerprint(self) -> str:
        text = json.dumps([self.model_dump(mode="json"), self.identity()], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """The step as a line: its command and the fields that differ from their defaults."""
        fields = self.model_dump(mode="json", exclude_defaults=True, exclude={"command"})
        return " ".join([self.command, *(f"{key}={_shown(value)}" for key, value in fields.items())])


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(_shown, value))
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}={_shown(item)}" for key, item in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:.9g}"  # 5.0 as 5, 4.6 as 4.6
    return str(value)


def check_apart(step: Step) -> None:
    """`UserError` unless every output lies apart from every input (neither contains the other, links followed) and
    none is reached through a link: a run must never write into what it reads or into another place than it
    names."""
    for output in step.writes():
        written = Path(output.path)
        for link in _links_on(output):
            through = "" if link == written else f"{written}: "
            raise UserError(
                f"{through}{link} is a link (to {link.resolve()}); outputs are never written through links, choose a "
                "path without one"
            )
        for read in step.reads():
            a, b = written.resolve(), Path(read).resolve()
            if a == b or a in b.parents or b in a.parents:
                how = "is" if a == b else "contains" if a in b.parents else "lies inside"
                raise UserError(f"{written}: the output {how} the input {read}; choose an output apart from it")


def _links_on(output: Output) -> list[Path]:
    """Links an output would be written through: in a dataset's path below its container, or the file itself."""
    if not output.dataset:
        return [Path(output.path)] if Path(output.path).is_symlink() else []
    path = DatasetPath.parse(output.path)
    parts = Path(path.name).parts
    return [
        path.container.joinpath(*parts[: i + 1])
        for i in range(len(parts))
        if path.container.joinpath(*parts[: i + 1]).is_symlink()
    ]


def run_step(step: Step, execution: Execution) -> None:
    """Run `step` (its outputs checked apart from its inputs first) and record its fingerprint with each output it
    wrote."""
    check_apart(step)
    with ExitStack() as locks:  # every dataset the step writes, for its whole run (its stages take them again)
        for output in step.writes():
            if output.dataset:
                locks.enter_context(RunLock(DatasetOutput.parse(output.path).lock, output.path))
        step.run(execution)
    record = {
        "command": step.command,
        "fingerprint": step.fingerprint(),
        "config": step.model_dump(mode="json"),
        "identity": step.identity(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for output in step.writes():
        if output.exists():
            output.write_record(record)


def stale(step: Step) -> str | None:
    """Why the complete outputs of `step` are not up to date: one that records no step, or another step's
    fingerprint (then the fields that differ); None when every output records this step."""
    now = step.model_dump(mode="json")
    fingerprint = step.fingerprint()
    for output in step.writes():
        record = output.read_record()
        if record is None:
            return f"{output.path} records no step that wrote it"
        if record.get("fingerprint") == fingerprint:
            continue
        before = record.get("config", {})
        differences = [
            f"{key} {_shown(before.get(key))} -> {_shown(now.get(key))}"
            for key in dict.fromkeys([*before, *now])
            if before.get(key) != now.get(key)
        ]
        if not differences:
            changed = [key for key, digest in step.identity().items() if record.get("identity", {}).get(key) != digest]
            return f"changed: {', '.join(changed)}" if changed else f"{output.path} records another step"
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        return "options changed: " + ", ".join(differences[:3]) + more
    return None


def run_and_report(stage: BlockwiseStage, execution: Execution) -> dict:
    """Run a blockwise stage and print what it wrote."""
    summary = run_stage(
        stage,
        workers=execution.workers_or(1),
        overwrite=execution.overwrite,
        launcher=execution.launcher,
        progress=execution.progress,
    )
    if summary.get("already_complete"):
        print(f"{summary['output']} is already complete (same command, same parameters); nothing to do")
        return summary
    array = open_dataset(summary["output"])
    print(
        f"wrote {summary['output']}: {tuple(array.shape)} {array.dtype}, voxel size {nm_text(array.voxel_size)}, "
        f"offset {nm_text(array.offset)}\n"
        f"  {summary['blocks_processed']} blocks processed, {summary['blocks_skipped']} skipped (already done), "
        f"{summary['seconds']:.1f} s, {summary['voxels_per_second'] / 1e6:.1f} M voxels/s"
    )
    return summary


class StageStep(Step):
    """A command that runs one blockwise stage; a subclass also derives from the stage's class, so the step's
    fields (and validators) are the stage's."""

    stage_class: ClassVar[type[BlockwiseStage]]

    def stage(self) -> BlockwiseStage:
        return self.stage_class.model_validate(self.model_dump(exclude={"command"}))

    def writes(self) -> list[Output]:
        return [Output(str(output), dataset=True) for output in self.stage().outputs()]

    def run(self, execution: Execution) -> None:
        run_and_report(self.stage(), execution)
