"""Pipelines: an ordered list of typed stages (steps, `incasem_like.workflow.steps`), run skipping finished ones.

A pipeline is a value (`Pipeline`: named stages, each a step and how it runs); `load_pipeline` makes one from a
YAML file with a `name`, a `description`, `variables` and `stages`. A stage of the file is a mapping: `command`
(the step's kind: `convert`, `labels metric-mask`, ...) and the step's fields, beside the stage's `name`,
`when_set` and the keys of how it runs (`workers`, `threads`, the cluster settings). In values, `${NAME}` is a
variable's value (a whole-value reference keeps its type, e.g. a list for `voxel_size`; an optional variable left
unset leaves the field out), `${pipeline_dir}` the file's folder and `${STAGE.output}` an earlier stage's main
output. Before anything runs, every requested stage is validated as its step and the inputs of the stages that will
run must exist or come from an earlier stage.

Then each stage in order is
- not requested: a variable its `when_set` lists is unset, or it uses the output of a stage not requested;
- skipped: its outputs are complete and record this step's fingerprint (`workflow.step.stale`), wherever the step
  was run from (by a pipeline or by its command);
- run: otherwise, replacing its existing outputs when `--force` names it, when they record another step (changed
  fields, another checkpoint or config) or none, or when a stage that writes one of its inputs runs; incomplete
  outputs are resumed by the step itself.
"""

import difflib
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from incasem_like.blockwise.outputs import DatasetOutput
from incasem_like.core.config_files import load_yaml, read_yaml_mapping
from incasem_like.core.errors import BlockwiseRunFailed, FieldError, UserError, describe_validation_error
from incasem_like.store.datasets import DatasetPath
from incasem_like.workflow.step import EXECUTION_KEYS, Execution, ExecutionSpec, Step, run_step, stale
from incasem_like.workflow.steps import STEP_TYPES, TrainStep, ViewStep

NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
BUILTIN = "pipeline_dir"
REFERENCE = re.compile(r"\$\{([^}]*)\}")
#: the keys of a stage that are not its step's fields
STAGE_KEYS = ("name", "when_set")
#: a step's status after a run, in the order the summary counts them
STATUSES = ("ran", "would run", "skipped", "not requested", "failed", "interrupted", "not run")

Value = str | int | float | bool | list[str | int | float] | None


# --- the file ----------------------------------------------------------------------------------------------------
class Variable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Value = None
    required: bool = False
    help: str = ""


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = ""
    variables: dict[str, Variable] = {}
    stages: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("variables", mode="before")
    @classmethod
    def _shorthand(cls, value):
        """`name: VALUE` is short for `name: {default: VALUE}`."""
        if isinstance(value, dict):
            return {key: item if isinstance(item, dict) else {"default": item} for key, item in value.items()}
        return value


def _describe(error: ValidationError) -> str:
    """One line for a pipeline file's validation error: where, what and the fix."""
    first = error.errors()[0]
    loc = list(first["loc"])
    model: type[BaseModel]
    if loc[:1] == ["variables"] and len(loc) > 1:
        where, rest, model = f"variable {loc[1]}: ", loc[2:], Variable
    elif loc[:1] == ["stages"] and len(loc) > 1:
        return f"stage {int(loc[1]) + 1}: a stage is a mapping of command, its fields, name and when_set"
    else:
        where, rest, model = "", loc, PipelineSpec
    if first["type"] == "extra_forbidden":
        return f"{where}{'.'.join(map(str, rest))}: unknown key; allowed: {', '.join(model.model_fields)}"
    return where + describe_validation_error(error, model)


# --- the pipeline as a value ---------------------------------------------------------------------------------------
@dataclass
class Stage:
    """A named step and how it runs; `not_requested` says why it is not requested (None: it is)."""

    index: int
    name: str
    command: str
    step: Step | None = None
    execution: Execution = field(default_factory=Execution)
    not_requested: str | None = None

    @property
    def label(self) -> str:
        return f"stage {self.index} ({self.name})"


@dataclass
class Pipeline:
    name: str
    description: str
    stages: list[Stage]
    #: the file it was read from (None for a pipeline made in code, such as the demo's)
    path: Path | None = None

    @classmethod
    def of(cls, name: str, description: str, steps: Sequence[tuple[str, Step]], execution: Execution) -> "Pipeline":
        """A pipeline made in code: named steps that all run with `execution`."""
        stages = [Stage(i, label, step.command, step, execution) for i, (label, step) in enumerate(steps, 1)]
        return cls(name, description, stages)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise UserError(
            f"--force {name}: no such stage in {self.path}; stages: {', '.join(s.name for s in self.stages)}"
        )


class _UsesUnrequested(Exception):
    """A stage refers to the output of a stage that is not requested."""


def load_pipeline(path: str | Path, assignments: Sequence[str] = ()) -> Pipeline:
    """Read and check a pipeline file with `--set KEY=VALUE` overrides; `UserError` (one line) if anything is wrong.
    Every requested stage is validated as its step; nothing is run or written."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pipeline file; see pipelines/ for examples")
    content = read_yaml_mapping(path, "keys (name, description, variables, stages)")
    try:
        spec = PipelineSpec.model_validate(content)
    except ValidationError as error:
        raise UserError(f"{path}: {_describe(error)}") from None
    try:
        values = _variable_values(spec, assignments, path)
        stages: list[Stage] = []
        for index, entry in enumerate(spec.stages, 1):
            stages.append(_load_stage(index, entry, spec, values, stages))
        check_one_writer(stages)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return Pipeline(spec.name, spec.description, stages, path)


def check_one_writer(stages: list[Stage]) -> None:
    """`UserError` if two stages write the same output (or one inside the other's): on every rerun each would
    replace what the other wrote."""
    written: list[tuple[Path, Stage]] = []
    for stage in stages:
        for output in stage.step.writes() if stage.step else []:
            path = Path(output.path).resolve()
            for other, writer in written:
                if writer is not stage and _related(path, other):
                    raise UserError(
                        f"{stage.label} and {writer.label} both write {output.path}; give each stage its own output"
                    )
            written.append((path, stage))


def _variable_values(spec: PipelineSpec, assignments: Sequence[str], path: Path) -> dict[str, Value]:
    for name in spec.variables:
        if name == BUILTIN or not re.match(NAME, name):
            raise UserError(f"variable {name}: not a name a pipeline can define (letters, digits, _; not {BUILTIN})")
    values = {name: variable.default for name, variable in spec.variables.items()}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals:
            raise UserError(f"--set {assignment}: write KEY=VALUE, e.g. --set {next(iter(values), 'name')}=...")
        if key not in values:
            raise UserError(f"--set {key}: no such variable; variables: {', '.join(values) or 'none'}")
        try:
            value = load_yaml(text, f"--set {key}")
        except UserError:
            value = text
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            raise UserError(f"--set {assignment}: a value is a word, a number or a list of them")
        values[key] = value
    pipeline_dir = str(path.resolve().parent)
    for key, value in values.items():
        if value == "":
            values[key] = None  # an empty value unsets a variable
        elif isinstance(value, str) and f"${{{BUILTIN}}}" in value:
            values[key] = os.path.normpath(value.replace(f"${{{BUILTIN}}}", pipeline_dir))
    for name, variable in spec.variables.items():
        if variable.required and values[name] is None:
            about = f" ({variable.help})" if variable.help else ""
            raise UserError(f"variable {name} is required: pass --set {name}=VALUE{about}")
    return {**values, BUILTIN: pipeline_dir}


class StageKeys(BaseModel):
    """The keys of a pipeline stage besides its step's fields and how it runs."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(None, pattern=NAME)
    command: str = ""
    when_set: list[str] = Field([], description="variables that must be set for the stage to be requested")


def _load_stage(index: int, entry: dict, pipeline: PipelineSpec, values: dict, earlier: list[Stage]) -> Stage:
    """A stage of the file, validated as its step unless it is not requested; errors name the stage."""
    try:
        keys = StageKeys.model_validate(entry)
    except ValidationError as error:
        raise UserError(f"stage {index}: {describe_validation_error(error, StageKeys)}") from None
    command = " ".join(keys.command.split())
    stage = Stage(index, keys.name or re.sub(r"[ -]", "_", command) or f"stage{index}", command)
    try:
        if not re.match(NAME, stage.name):
            raise UserError(f"name {stage.name!r}: a stage's name has letters, digits and _ only")
        if stage.name in (s.name for s in earlier):
            raise UserError("an earlier stage has this name; give each stage its own name")
        outputs = {s.name: s.step.shown() if s.step else None for s in earlier}
        _parse_stage(stage, entry, keys.when_set, pipeline, values, outputs)
    except _UsesUnrequested as needed:
        stage.not_requested = f"uses the output of {needed}, which is not requested"
    except FieldError as error:
        raise UserError(f"{stage.label}: {error.named({})}") from None
    except UserError as error:
        raise UserError(f"{stage.label}: {error}") from None
    return stage


def _parse_stage(
    stage: Stage, entry: dict, when_set: list[str], pipeline: PipelineSpec, values: dict, outputs: dict
) -> None:
    if "options" in entry:
        raise UserError(
            "options: stages no longer nest their options; write the step's fields beside command "
            "(e.g. command: clahe, input: ..., output: ...; see docs/usage/pipelines.md)"
        )
    if stage.command not in STEP_TYPES:
        guess = difflib.get_close_matches(stage.command, STEP_TYPES, n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise UserError(f"command {stage.command!r} is not a stage{hint}; stages run: {', '.join(STEP_TYPES)}")
    for variable in when_set:
        if variable not in pipeline.variables:
            raise UserError(f"when_set: {variable} is not a variable; variables: {', '.join(pipeline.variables)}")
    unset = [variable for variable in when_set if values[variable] is None]
    if unset:
        stage.not_requested = f"{' '.join(f'--set {name}=...' for name in unset)} to run it"
        return
    fields: dict[str, Any] = {}
    for key, value in entry.items():
        if key in STAGE_KEYS:
            continue
        value = _substitute(value, values, outputs, key)
        if value is not None:
            fields[key] = value
    how = {key: fields.pop(key) for key in EXECUTION_KEYS if key in fields}
    step_type = STEP_TYPES[stage.command]
    try:
        execution = ExecutionSpec.model_validate(how)
        stage.step = step_type.model_validate(fields)
    except ValidationError as error:
        raise UserError(describe_validation_error(error, step_type)) from None
    stage.execution = execution.execution()
    for output in stage.step.writes():
        if output.dataset:
            DatasetPath.parse(output.path)  # a path that names no dataset is refused before anything runs


def _substitute(value: Any, values: dict, outputs: dict, where: str) -> Any:
    """`value` with `${...}` references replaced: a whole-value reference keeps the value's type."""
    if isinstance(value, list):
        return [_substitute(item, values, outputs, where) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, values, outputs, f"{where}.{key}") for key, item in value.items()}
    if not isinstance(value, str):
        return value
    whole = REFERENCE.fullmatch(value)
    if whole:
        return _lookup(whole[1], values, outputs, where, inside=False)

    def text(match: re.Match) -> str:
        found = _lookup(match[1], values, outputs, where, inside=True)
        return " ".join(map(str, found)) if isinstance(found, list) else str(found)

    return REFERENCE.sub(text, value)


def _lookup(name: str, values: dict, outputs: dict, where: str, inside: bool) -> Value:
    stage, dot, attribute = name.partition(".")
    if dot:
        if stage not in outputs or attribute != "output":
            earlier = ", ".join(f"${{{s}.output}}" for s in outputs) or "none (this is the first stage)"
            raise UserError(f"{where}: ${{{name}}} is no earlier stage's output; earlier outputs: {earlier}")
        if outputs[stage] is None:
            raise _UsesUnrequested(stage)
        return outputs[stage]
    if name not in values:
        known = ", ".join(f"${{{v}}}" for v in values)
        raise UserError(f"{where}: ${{{name}}} is not a variable of this pipeline; variables: {known}")
    value = values[name]
    if inside and value is None:
        raise UserError(f"{where}: variable {name} is not set; pass --set {name}=VALUE or list it in when_set")
    return value


# --- what to run -------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A stage's part in one run: the action planned, why, how it runs, and after running its result."""

    stage: Stage
    action: str  # "run", "skip" or "not requested"
    reason: str
    execution: Execution = field(default_factory=Execution)
    status: str = ""
    seconds: float | None = None


def _related(a: Path, b: Path) -> bool:
    """One path is the other or inside it (a dataset in a container, a file in a folder)."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def plan(pipeline: Pipeline, force: Sequence[str] = (), quiet: bool = False) -> list[Plan]:
    """What each stage will do, checking that the inputs of the stages that run exist or come from an earlier
    stage (`UserError` otherwise). `force` names stages to rerun; `quiet` turns progress bars off."""
    forced = {pipeline.stage(name).name for name in force}
    plans: list[Plan] = []
    written: list[Path] = []  # outputs of the requested stages so far
    rewritten: list[tuple[Path, Stage]] = []  # outputs of the stages that run
    for stage in pipeline.stages:
        step = stage.step
        if step is None:
            plans.append(Plan(stage, "not requested", stage.not_requested or ""))
            continue
        try:
            action, reason, replace_outputs = _decide(stage, step, forced, rewritten)
        except FieldError as error:
            raise UserError(f"{_where(pipeline)}{stage.label}: {error.named({})}") from None
        except UserError as error:
            raise UserError(f"{_where(pipeline)}{stage.label}: {error}") from None
        outputs = [Path(output.path).resolve() for output in step.writes()]
        if action == "skip":
            plans.append(Plan(stage, "skip", reason))
            written += outputs
            continue
        for text in step.reads():
            path = Path(text).resolve()
            if not path.exists() and not any(_related(path, out) for out in written):
                raise UserError(
                    f"{_where(pipeline)}{stage.label}: its input {text} does not exist and no earlier stage writes "
                    "it; check the variables (--set) and the stage's fields"
                )
        execution = replace(stage.execution, progress=not quiet, **_rerun(step, replace_outputs))
        if execution.overwrite:  # what it would replace must be replaceable: refused now, before anything runs
            for output in step.writes():
                if output.dataset and output.exists():
                    try:
                        DatasetOutput.parse(output.path).check_replaceable()
                    except UserError as error:
                        raise UserError(f"{_where(pipeline)}{stage.label}: {error}") from None
        plans.append(Plan(stage, "run", reason, execution))
        written += outputs
        rewritten += [(path, stage) for path in outputs]
    return plans


def _where(pipeline: Pipeline) -> str:
    return f"{pipeline.path}: " if pipeline.path else ""


def _decide(stage: Stage, step: Step, forced: set[str], rewritten: list[tuple[Path, Stage]]) -> tuple[str, str, bool]:
    """(action, reason, whether existing outputs are replaced) for a requested stage."""
    outputs = step.writes()
    inputs = [Path(path).resolve() for path in step.reads()]
    upstream = next(((s, path) for path in inputs for out, s in rewritten if _related(path, out)), None)
    if isinstance(step, ViewStep):
        return "run", "running (it shows the data)", True  # its state file is its own to replace
    if not outputs:
        return "run", "running (it writes no file to check)", False
    if not any(output.exists() for output in outputs):
        return "run", "running", False
    if stage.name in forced:
        return "run", "running again (--force)", True
    if upstream:
        return "run", f"running again ({upstream[0].name} rewrites its input {upstream[1]})", True
    if not all(output.complete() for output in outputs):
        return "run", "resuming (incomplete)", False
    if changed := stale(step):
        return "run", f"running again ({changed})", True
    return "skip", "skipped (complete)", False


def _rerun(step: Step, replace_outputs: bool) -> dict[str, bool]:
    """How existing outputs are treated: replaced (overwrite); a training run resumes (train) or restarts."""
    if isinstance(step, TrainStep):
        run_dir = Path(step.writes()[0].path)
        if step.command == "train" and not replace_outputs and any((run_dir / "checkpoints").glob("iteration_*.pt")):
            return {"resume": True}
        return {"overwrite": run_dir.is_dir() and any(run_dir.iterdir())}
    return {"overwrite": replace_outputs}


# --- running -----------------------------------------------------------------------------------------------------
def run_pipeline(pipeline: Pipeline, plans: list[Plan], dry_run: bool = False, serve: bool = False) -> None:
    """Run the planned stages in order with a progress line each, then print the summary table and the review
    link (with `serve`, serve the view stage's container until Ctrl-C). A failing stage stops the run: the table
    so far is printed and the error raised again, naming the stage."""
    started = time.perf_counter()
    views: list[ViewStep] = []
    for item in plans:
        stage = item.stage
        prefix = f"[{stage.index}/{len(plans)}] {stage.name}:"
        if item.action != "run":
            item.status = "skipped" if item.action == "skip" else "not requested"
            shown = stage.step.shown() if item.action == "skip" and stage.step else item.reason
            print(f"{prefix} {item.reason if item.action == 'skip' else 'not requested'}: {shown}", flush=True)
            continue
        assert stage.step is not None
        print(f"{prefix} {item.reason}: {stage.step.summary()}", flush=True)
        if dry_run:
            item.status = "would run"
            continue
        begin = time.perf_counter()
        try:
            if isinstance(stage.step, ViewStep) and stage.step.base_url is None:
                _show_view(stage.step)  # serving would block the batch: it waits for the end of the run (--serve)
            else:
                run_step(stage.step, item.execution)
        except BaseException as error:
            item.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            item.seconds = time.perf_counter() - begin
            for later in plans[stage.index :]:
                later.status = "not run" if later.action == "run" else later.action.replace("skip", "skipped")
            print(format_summary(pipeline, plans, time.perf_counter() - started), flush=True)
            if isinstance(error, (UserError, ValidationError, BlockwiseRunFailed)):
                message = (
                    error.named({})
                    if isinstance(error, FieldError)
                    else describe_validation_error(error)
                    if isinstance(error, ValidationError)
                    else str(error)
                )
                kind = BlockwiseRunFailed if isinstance(error, BlockwiseRunFailed) else UserError
                raise kind(f"{stage.label} failed: {message}; rerunning the pipeline resumes from there") from None
            raise
        item.seconds = time.perf_counter() - begin
        item.status = "ran"
        if isinstance(stage.step, ViewStep):
            views.append(stage.step)
    print(format_summary(pipeline, plans, time.perf_counter() - started), flush=True)
    if not dry_run:
        _review(views, serve)


def _show_view(view: ViewStep) -> None:
    """The layers a local view stage will show (checking its datasets), without serving."""
    from incasem_like.review.view import build_state, describe_layers, shown_datasets

    datasets, notes = shown_datasets(Path(view.container), view.datasets)
    lines = [f"view {view.container}: {describe_layers(build_state(datasets, 'http://127.0.0.1'))}"]
    print("\n".join([*lines, *(f"  {note}" for note in notes)]), flush=True)


def _review(views: list[ViewStep], serve: bool) -> None:
    """The neuroglancer link of each view stage that ran; with `serve`, serve the last local one until Ctrl-C."""
    from incasem_like.review.view import DEFAULT_CLIENT_URL, neuroglancer_link, view_state

    local = [view for view in views if view.base_url is None]
    for view in views:
        if view.base_url is not None:
            state, _ = view_state(Path(view.container), view.datasets, view.base_url)
            print(f"neuroglancer: {neuroglancer_link(state, view.client_url or DEFAULT_CLIENT_URL)}", flush=True)
        elif not serve or view is not local[-1]:
            shown = " ".join(["incasem-like view", view.container, *view.datasets])
            print(f"neuroglancer: not served; rerun with --serve (finished stages are skipped) or run {shown}")
    if serve and local:
        from incasem_like.review.serve import serve as serve_container

        serve_container(local[-1])


def format_summary(pipeline: Pipeline, plans: list[Plan], seconds: float) -> str:
    """The summary table: per stage its command, status, seconds and main output (or why it was not requested)."""
    rows = [("#", "stage", "command", "status", "seconds", "output")]
    for item in plans:
        stage = item.stage
        shown = stage.step.shown() if stage.step else item.reason
        time_taken = f"{item.seconds:.1f}" if item.seconds is not None else "-"
        rows.append((str(stage.index), stage.name, stage.command, item.status, time_taken, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in (0, 4) else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    counts = Counter(item.status for item in plans)
    tally = ", ".join(f"{counts[status]} {status}" for status in STATUSES if status in counts)
    source = f" ({pipeline.path})" if pipeline.path else ""
    return "\n".join([f"pipeline {pipeline.name}{source}: {tally}; {seconds:.1f} s", *lines])
