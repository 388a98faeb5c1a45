"""Pipeline files: `incasem-like run PIPELINE.yaml` runs the commands a YAML file lists, skipping finished ones.

A pipeline has a `name`, a `description`, `variables` and `stages`. A stage names a command (`labels metric-mask`
for an operation) and its `options`, keyed by the command's long option names without dashes (positional
arguments by their names, e.g. `src` and `out` of convert). It is parsed by that command's own argparse parser
and run by its own run function, so it does exactly what the command typed by hand does (the progress line
prints that command). In options, `${NAME}` is a variable's value (a whole-value reference keeps its type, e.g. a
list for `voxel-size`; an optional variable left unset omits the option), `${pipeline_dir}` the pipeline file's
folder and `${STAGE.output}` an earlier stage's main output.

Before anything runs, the whole pipeline is checked: the file, the variables and `--set` values, each stage's
command and options (by the command's parser) and that the inputs of every stage that will run exist or come
from an earlier stage. Then each stage in order is
- not requested: a variable its `when_set` lists is unset, or it uses the output of a stage not requested;
- skipped: its outputs exist and are complete (datasets by their `complete` mark; files and folders, written
  atomically, by existing; training runs and mesh folders by their summary.json);
- run: otherwise; and also when `--force` names it, when its options differ from those an output records (or it
  records none: it was not written by this stage of a pipeline), or when a stage that writes one of its inputs
  runs. Then its existing outputs are replaced (`--overwrite`); incomplete outputs of an unchanged stage are
  resumed by the command itself.
Each stage run is recorded (command line, options) with each of its outputs: in a dataset's metadata, beside a file
or folder as `.NAME.incasem_stage.json`; so the check holds wherever the pipeline is run from.
"""

import argparse
import difflib
import json
import os
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from incasem_like.core.config_files import read_yaml_mapping
from incasem_like.core.errors import BlockwiseRunFailed, UserError, describe_validation_error
from incasem_like.core.files import write_atomically
from incasem_like.store.datasets import DatasetPath, dataset_meta, is_complete, update_dataset_meta

NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
BUILTIN = "pipeline_dir"
REFERENCE = re.compile(r"\$\{([^}]*)\}")
#: the key of a dataset's metadata, and the suffix of the file beside any other output, holding its stage record
RECORD = "incasem_stage"
#: options that change how a command runs, not what it writes: a change does not make a stage rerun
UNCOMPARED = {
    "run",
    "workers",
    "quiet",
    "overwrite",
    "resume",
    "threads",
    "cluster",
    "cluster_config",
    "gpus",
    "cpus",
    "memory",
    "time_limit",
    "queue",
    "account",
    "scheduler_args",
    "scheduler_host",
    "max_restarts",
    "open",
    "port",
    "bind",
}

#: a step's status after a run, in the order the summary counts them
STATUSES = ("ran", "would run", "skipped", "not requested", "failed", "interrupted", "not run")

Value = str | int | float | bool | list[str | int | float] | None


# --- the file ----------------------------------------------------------------------------------------------------
class Variable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Value = None
    required: bool = False
    help: str = ""


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=NAME)
    command: str
    options: dict[str, Any] = {}
    when_set: list[str] = Field([], description="variables that must be set for the stage to be requested")


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = ""
    variables: dict[str, Variable] = {}
    stages: list[StageSpec] = Field(min_length=1)

    @field_validator("variables", mode="before")
    @classmethod
    def _shorthand(cls, value):
        """`name: VALUE` is short for `name: {default: VALUE}`."""
        if isinstance(value, dict):
            return {key: item if isinstance(item, dict) else {"default": item} for key, item in value.items()}
        return value


def _describe(error: ValidationError) -> str:
    """One line for a pipeline file's validation error: where (stage numbers from 1), what and the fix."""
    first = error.errors()[0]
    loc = list(first["loc"])
    model: type[BaseModel]
    if loc[:1] == ["stages"] and len(loc) > 1 and isinstance(loc[1], int):
        where, rest, model = f"stage {loc[1] + 1}", loc[2:], StageSpec
    elif loc[:1] == ["variables"] and len(loc) > 1:
        where, rest, model = f"variable {loc[1]}", loc[2:], Variable
    else:
        where, rest, model = "", loc, PipelineSpec
    key = ".".join(map(str, rest))
    if first["type"] == "missing":
        message = f"{key} is missing; add it"
    elif first["type"] == "extra_forbidden":
        hint = " (a command's options go under options)" if model is StageSpec else ""
        message = f"{key}: unknown key; allowed: {', '.join(model.model_fields)}{hint}"
    else:
        message = describe_validation_error(error)
    return f"{where}: {message}" if where else message


# --- commands as stages ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """What a stage writes: a dataset (complete by its mark), or a file or folder (complete when it exists, or
    when `marker` inside it does)."""

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


@dataclass
class StageIO:
    """A stage's inputs (datasets, files, folders) and outputs; `shown` is the output the summary names."""

    inputs: list[str]
    outputs: list[Output]
    shown: str


def _dataset_io(args) -> StageIO:
    return StageIO([args.input], [Output(args.output, dataset=True)], args.output)


def _predict_io(args) -> StageIO:
    from incasem_like.nn.models import checkpoint_location

    outputs = [Output(f"{args.out.rstrip('/')}/{name}", dataset=True) for name in ("probabilities", "segmentation")]
    return StageIO([str(checkpoint_location(args.checkpoint)), args.raw], outputs, args.out)


def _evaluate_io(args) -> StageIO:
    inputs = [path for path in (args.prediction, args.labels, args.metric_mask, args.mask) if path]
    outputs = [Output(str(args.json))] if args.json else []
    return StageIO(inputs, outputs, str(args.json) if args.json else "(scores printed)")


def _objects_io(args) -> StageIO:
    labels = args.labels_out or str(args.segmentation).rstrip("/") + "_objects"
    return StageIO([args.segmentation], [Output(args.csv), Output(labels, dataset=True)], args.csv)


def _training_io(args) -> StageIO:
    """The config and the datasets it trains and validates on; the run folder, complete with its summary."""
    from incasem_like.training.config import load_config

    config = load_config(args.config)
    inputs = [
        args.config,
        *(str(cell.path(name)) for cell in config.training + config.validation for name in cell.datasets().values()),
    ]
    if getattr(args, "checkpoint", None):
        from incasem_like.nn.models import checkpoint_location

        inputs.append(str(checkpoint_location(args.checkpoint)))
    return StageIO(inputs, [Output(config.run_dir, marker="summary.json")], config.run_dir)


#: command -> its inputs and outputs, from its parsed arguments (commands missing here cannot be stages)
STAGE_IO: dict[str, Callable[[argparse.Namespace], StageIO]] = {
    "convert": lambda args: StageIO([args.src], [Output(args.out, dataset=True)], args.out),
    "clahe": _dataset_io,
    "mask": _dataset_io,
    "labels": _dataset_io,
    "downsample": _dataset_io,
    "threshold": _dataset_io,
    "predict": _predict_io,
    "evaluate": _evaluate_io,
    "export": lambda args: StageIO([args.dataset], [Output(str(args.out_dir))], str(args.out_dir)),
    "objects": _objects_io,
    "mesh": lambda args: StageIO([args.labels], [Output(args.output, marker="summary.json")], args.output),
    "train": _training_io,
    "finetune": _training_io,
    "view": lambda args: StageIO([args.container], [], args.container),
}


class _ParseError(Exception):
    pass


def _raise_parse_error(message: str):
    raise _ParseError(message)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return actions[0].choices if actions else {}


def _command_parser(root: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of `command` (e.g. `labels clean`); `UserError` if it is none a stage can run."""
    words = command.split() or [""]
    if words[0] not in STAGE_IO:
        if words[0] in _subparsers(root):
            raise UserError(f"command {command!r} cannot be a pipeline stage; stages run: {', '.join(STAGE_IO)}")
        guess = difflib.get_close_matches(words[0], STAGE_IO, n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise UserError(f"command {command!r} is not a command{hint}; stages run: {', '.join(STAGE_IO)}")
    parser = root
    for word in words:
        choices = _subparsers(parser)
        if word not in choices:
            raise UserError(f"command {command!r}: no operation {word!r}; use one of {', '.join(choices)}")
        parser = choices[word]
    if _subparsers(parser):
        operations = ", ".join(f"{command} {operation}" for operation in _subparsers(parser))
        raise UserError(f"command {command!r} needs an operation: {operations}")
    return parser


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option key -> argparse action: long options without dashes, positional arguments by their names."""
    actions = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            actions.update({option[2:]: action for option in action.option_strings if option.startswith("--")})
        else:
            actions[action.dest] = action
    return actions


def _unknown_option(key: str, actions: dict[str, argparse.Action], command: str) -> str:
    guess = difflib.get_close_matches(key.lstrip("-").replace("_", "-"), actions, n=1)
    hint = f"did you mean {guess[0]}?" if guess else f"{command} takes: {', '.join(actions)}"
    return f"options.{key}: {command} has no such option ({hint})"


def _tokens(key: str, value: Any, action: argparse.Action) -> list[str]:
    """The command-line words of one option (positional arguments: only their values)."""
    if isinstance(value, dict):
        raise UserError(f"options.{key}: a mapping is not an option value; give a value or a list")
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UserError(f"options.{key} = {value!r}: a switch; write true or false")
        return [f"--{key}"] if value else []
    if isinstance(value, bool):
        raise UserError(f"options.{key} = {value}: takes a value, not true/false")
    many = action.nargs not in (None, "?")
    if isinstance(value, list) and not many:
        raise UserError(f"options.{key} = {value}: takes one value, not a list")
    if many:
        values = value.split() if isinstance(value, str) else value if isinstance(value, list) else [value]
        words = [str(item) for item in values]
        return words if not action.option_strings else [f"--{key}", *words]
    if not action.option_strings:
        return [str(value)]
    return [f"--{key}={value}"] if str(value).startswith("-") else [f"--{key}", str(value)]


def _parse_error(message: str, parser: argparse.ArgumentParser) -> str:
    """argparse's message with the option keys of a pipeline file instead of the command line's names."""
    names = {}
    for key, action in _option_actions(parser).items():
        names["/".join(action.option_strings) or action.metavar or action.dest] = key
    if message.startswith("the following arguments are required:"):
        missing = [names.get(name.strip(), name.strip()) for name in message.split(":", 1)[1].split(",")]
        return f"options: {', '.join(missing)} missing; add {'it' if len(missing) == 1 else 'them'} under options"
    match = re.match(r"argument ([^:]+): (.*)", message)
    if match:
        return f"options.{names.get(match[1], match[1])}: {match[2]}"
    return message


# --- the loaded pipeline -----------------------------------------------------------------------------------------
@dataclass
class Stage:
    index: int
    name: str
    command: str
    parser: argparse.ArgumentParser | None = None
    argv: list[str] = field(default_factory=list)
    args: argparse.Namespace | None = None
    io: StageIO | None = None
    #: why the stage is not requested (None: it is)
    not_requested: str | None = None

    @property
    def label(self) -> str:
        return f"stage {self.index} ({self.name})"

    def command_line(self, extra: Sequence[str] = ()) -> str:
        return shlex.join(["incasem-like", *self.command.split(), *self.argv, *extra])

    def parse(self, extra: Sequence[str] = ()) -> argparse.Namespace:
        self.parser.error = _raise_parse_error  # one line naming the key, not argparse's usage and exit
        try:
            return self.parser.parse_args([*self.argv, *extra])
        except _ParseError as error:
            raise UserError(_parse_error(str(error), self.parser)) from None

    def options(self) -> dict:
        """The parsed options that decide what the stage writes (JSON values)."""
        values = {key: value for key, value in vars(self.args).items() if key not in UNCOMPARED}
        return json.loads(json.dumps(values, default=str))


@dataclass
class Pipeline:
    path: Path
    name: str
    description: str
    variables: dict[str, Value]
    stages: list[Stage]

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

    Every requested stage is parsed by its command's parser; nothing is run or written."""
    from incasem_like.cli.main import build_parser

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
        root = build_parser()
        stages: list[Stage] = []
        for index, stage_spec in enumerate(spec.stages, 1):
            stages.append(_prepare(index, stage_spec, spec, values, stages, root))
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return Pipeline(path, spec.name, spec.description, values, stages)


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
            value = yaml.safe_load(text)
        except yaml.YAMLError:
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


def _prepare(index, spec: StageSpec, pipeline: PipelineSpec, values, earlier: list[Stage], root) -> Stage:
    """A stage of the file, parsed by its command's parser unless it is not requested; errors name the stage."""
    stage = Stage(index, spec.name or "_".join(spec.command.split()) or f"stage{index}", " ".join(spec.command.split()))
    try:
        if stage.name in (s.name for s in earlier):
            raise UserError("an earlier stage has this name; give each stage its own name")
        _parse_stage(stage, spec, pipeline, values, {s.name: s.io.shown if s.io else None for s in earlier}, root)
    except _UsesUnrequested as needed:
        stage.not_requested = f"uses the output of {needed}, which is not requested"
    except UserError as error:
        raise UserError(f"{stage.label}: {error}") from None
    return stage


def _parse_stage(stage: Stage, spec: StageSpec, pipeline: PipelineSpec, values, outputs: dict, root) -> None:
    stage.parser = _command_parser(root, spec.command)
    actions = _option_actions(stage.parser)
    for key in spec.options:
        if key not in actions:
            raise UserError(_unknown_option(key, actions, stage.command))
    for variable in spec.when_set:
        if variable not in pipeline.variables:
            raise UserError(f"when_set: {variable} is not a variable; variables: {', '.join(pipeline.variables)}")
    unset = [variable for variable in spec.when_set if values[variable] is None]
    if unset:
        stage.not_requested = f"{' '.join(f'--set {name}=...' for name in unset)} to run it"
        return
    positional: list[str] = []
    optional: list[str] = []
    for key, value in spec.options.items():
        value = _substitute(value, values, outputs, f"options.{key}")
        if value is not None:
            (optional if actions[key].option_strings else positional).extend(_tokens(key, value, actions[key]))
    stage.argv = positional + optional  # positional arguments first: an option taking a list would swallow them
    stage.args = stage.parse()
    stage.io = STAGE_IO[stage.command.split()[0]](stage.args)
    for output in stage.io.outputs:
        if output.dataset:
            DatasetPath.parse(output.path)  # a path that names no dataset is refused before anything runs


def _substitute(value: Any, values: dict, outputs: dict, where: str) -> Any:
    """`value` with `${...}` references replaced: a whole-value reference keeps the value's type."""
    if isinstance(value, list):
        return [_substitute(item, values, outputs, where) for item in value]
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
class Step:
    """A stage's part in one run: the action planned, why, the options added, and after running its result."""

    stage: Stage
    action: str  # "run", "skip" or "not requested"
    reason: str
    extra: list[str] = field(default_factory=list)
    status: str = ""
    seconds: float | None = None


def _related(a: Path, b: Path) -> bool:
    """One path is the other or inside it (a dataset in a container, a file in a folder)."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def plan(pipeline: Pipeline, force: Sequence[str] = (), quiet: bool = False) -> list[Step]:
    """What each stage will do, checking that the inputs of the stages that run exist or come from an earlier
    stage (`UserError` otherwise). `force` names stages to rerun; `quiet` adds --quiet where a command has it."""
    forced = {pipeline.stage(name).name for name in force}
    steps: list[Step] = []
    written: list[Path] = []  # outputs of the requested stages so far
    rewritten: list[tuple[Path, Stage]] = []  # outputs of the stages that run
    for stage in pipeline.stages:
        if stage.not_requested:
            steps.append(Step(stage, "not requested", stage.not_requested))
            continue
        inputs = [Path(path).resolve() for path in stage.io.inputs]
        outputs = stage.io.outputs
        upstream = next(((s, path) for path in inputs for out, s in rewritten if _related(path, out)), None)
        existing = any(output.exists() for output in outputs)
        replace, changed = False, None
        if not outputs:
            reason = "running (it writes no file to check)"
        elif not existing:
            reason = "running"
        elif stage.name in forced:
            reason, replace = "running again (--force)", True
        elif upstream:
            reason, replace = f"running again ({upstream[0].name} rewrites its input {upstream[1]})", True
        elif not all(output.complete() for output in outputs):
            reason = "resuming (incomplete)"
        elif changed := _changed(stage):
            reason, replace = f"running again ({changed})", True
        else:
            steps.append(Step(stage, "skip", "skipped (complete)"))
            written += [Path(output.path).resolve() for output in outputs]
            continue
        for text, path in zip(stage.io.inputs, inputs):
            if not path.exists() and not any(_related(path, out) for out in written):
                raise UserError(
                    f"{pipeline.path}: {stage.label}: its input {text} does not exist and no earlier stage writes "
                    "it; check the variables (--set) and the stage's options"
                )
        extra = _rerun_options(stage, replace and existing)
        if quiet and "quiet" in _option_actions(stage.parser):
            extra.append("--quiet")
        steps.append(Step(stage, "run", reason, extra))
        for output in outputs:
            written.append(Path(output.path).resolve())
            rewritten.append((written[-1], stage))
    return steps


def _rerun_options(stage: Stage, replace: bool) -> list[str]:
    """--overwrite where existing outputs must be replaced; a training run resumes (train) or restarts (finetune)."""
    command = stage.command.split()[0]
    if command in ("train", "finetune"):
        run_dir = Path(stage.io.outputs[0].path)
        if command == "train" and not replace and any((run_dir / "checkpoints").glob("iteration_*.pt")):
            return ["--resume"]
        return ["--overwrite"] if run_dir.is_dir() and any(run_dir.iterdir()) else []
    return ["--overwrite"] if replace else []


def _record_file(output: Output) -> Path:
    """Where the stage record of a file or folder output lives: beside it."""
    path = Path(output.path)
    return path.with_name(f".{path.name}.{RECORD}.json")


def _read_record(output: Output) -> dict | None:
    """The record of the stage that wrote `output`, kept with it (None if it has none)."""
    if output.dataset:
        return dataset_meta(DatasetPath.parse(output.path)).get(RECORD)
    path = _record_file(output)
    return json.loads(path.read_text()) if path.is_file() else None


def _changed(stage: Stage) -> str | None:
    """Why the stage's complete outputs are stale: options that differ from those an output records, or an output
    that records none (None if every output was written by these options)."""
    now = stage.options()
    for output in stage.io.outputs:
        record = _read_record(output)
        if record is None:
            return f"{output.path} records no pipeline stage that wrote it"
        before = record["options"]
        differences = [
            f"{key} {before[key]!r} -> {now[key]!r}" for key in before if key in now and before[key] != now[key]
        ]
        if differences:
            more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
            return "options changed: " + ", ".join(differences[:3]) + more
    return None


def _write_record(pipeline: Pipeline, stage: Stage, extra: list[str]) -> None:
    """Record the stage's run (pipeline, command line, options) with each of its outputs."""
    record = {
        "pipeline": str(pipeline.path),
        "stage": stage.name,
        "command": stage.command_line(extra),
        "options": stage.options(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for output in stage.io.outputs:
        if output.dataset:
            update_dataset_meta(DatasetPath.parse(output.path), **{RECORD: record})
        else:
            write_atomically(_record_file(output), json.dumps(record, indent=2) + "\n")


# --- running -----------------------------------------------------------------------------------------------------
def run_pipeline(pipeline: Pipeline, steps: list[Step], dry_run: bool = False, serve: bool = False) -> None:
    """Run the planned steps in order with a progress line each, then print the summary table and the review
    link (with `serve`, serve the view stage's container until Ctrl-C). A failing stage stops the run: the table
    so far is printed and the error raised again, naming the stage."""
    started = time.perf_counter()
    views = []
    for step in steps:
        stage = step.stage
        prefix = f"[{stage.index}/{len(steps)}] {stage.name}:"
        if step.action != "run":
            step.status = "skipped" if step.action == "skip" else "not requested"
            shown = stage.io.shown if step.action == "skip" else step.reason
            print(f"{prefix} {step.reason if step.action == 'skip' else 'not requested'}: {shown}", flush=True)
            continue
        print(f"{prefix} {step.reason}: {stage.command_line(step.extra)}", flush=True)
        if dry_run:
            step.status = "would run"
            continue
        begin = time.perf_counter()
        try:
            args = stage.parse(step.extra)
            if stage.command == "view" and args.base_url is None:
                _show_view(args)  # serving would block the batch: it waits for the end of the run (--serve)
            else:
                args.run(args)
        except BaseException as error:
            step.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            step.seconds = time.perf_counter() - begin
            for later in steps[stage.index :]:
                later.status = "not run" if later.action == "run" else later.action.replace("skip", "skipped")
            print(format_summary(pipeline, steps, time.perf_counter() - started), flush=True)
            if isinstance(error, (UserError, ValidationError, BlockwiseRunFailed)):
                # a stage's field is named by its key in the pipeline file: the option's long name without dashes
                keys = {field: flag.lstrip("-") for field, flag in stage.parser.get_default("field_flags").items()}
                message = (
                    describe_validation_error(error, flags=keys) if isinstance(error, ValidationError) else str(error)
                )
                kind = BlockwiseRunFailed if isinstance(error, BlockwiseRunFailed) else UserError
                raise kind(f"{stage.label} failed: {message}; rerunning the pipeline resumes from there") from None
            raise
        step.seconds = time.perf_counter() - begin
        step.status = "ran"
        if stage.io.outputs:
            _write_record(pipeline, stage, step.extra)
        if stage.command == "view":
            views.append(args)
    print(format_summary(pipeline, steps, time.perf_counter() - started), flush=True)
    if not dry_run:
        _review(views, serve)


def _show_view(args: argparse.Namespace) -> None:
    """The layers a local view stage will show (checking its datasets), without serving."""
    from incasem_like.review.view import build_state, describe_layers, shown_datasets

    datasets, notes = shown_datasets(Path(args.container), args.datasets)
    lines = [f"view {args.container}: {describe_layers(build_state(datasets, 'http://127.0.0.1'))}"]
    print("\n".join([*lines, *(f"  {note}" for note in notes)]), flush=True)


def _review(views: list[argparse.Namespace], serve: bool) -> None:
    """The neuroglancer link of each view stage that ran; with `serve`, serve the last local one until Ctrl-C."""
    from incasem_like.review.view import DEFAULT_CLIENT_URL, neuroglancer_link, view_state

    local = [args for args in views if args.base_url is None]
    for args in views:
        if args.base_url is not None:
            state, _ = view_state(Path(args.container), args.datasets, args.base_url)
            print(f"neuroglancer: {neuroglancer_link(state, args.client_url or DEFAULT_CLIENT_URL)}", flush=True)
        elif not serve or args is not local[-1]:
            print(
                f"neuroglancer: not served; rerun with --serve (finished stages are skipped) or run "
                f"{shlex.join(['incasem-like', 'view', args.container, *args.datasets])}",
                flush=True,
            )
    if serve and local:
        from incasem_like.cli.commands.view import serve as serve_container

        serve_container(local[-1])


def format_summary(pipeline: Pipeline, steps: list[Step], seconds: float) -> str:
    """The summary table: per stage its command, status, seconds and main output (or why it was not requested)."""
    rows = [("#", "stage", "command", "status", "seconds", "output")]
    for step in steps:
        stage = step.stage
        shown = stage.io.shown if stage.io else step.reason
        time_taken = f"{step.seconds:.1f}" if step.seconds is not None else "-"
        rows.append((str(stage.index), stage.name, stage.command, step.status, time_taken, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in (0, 4) else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    counts = Counter(step.status for step in steps)
    tally = ", ".join(f"{counts[status]} {status}" for status in STATUSES if status in counts)
    return "\n".join([f"pipeline {pipeline.name} ({pipeline.path}): {tally}; {seconds:.1f} s", *lines])
