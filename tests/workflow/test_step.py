"""Steps: the fingerprint an output records, why an output is stale, the registry of commands, the `roi` shorthand
and the execution keys of a pipeline stage."""

import argparse
from pathlib import Path
from typing import Literal

import pytest

from incasem_like.blockwise.launchers import LocalLauncher
from incasem_like.cli.main import build_parser
from incasem_like.core.errors import UserError
from incasem_like.core.files import file_digest, write_atomically
from incasem_like.workflow.step import Execution, ExecutionSpec, Output, Step, run_step, stale
from incasem_like.workflow.steps import STEP_TYPES, ClaheStep


class CopyStep(Step):
    """A file copied, upper-cased on request: a step with an input it is defined by."""

    command: Literal["copy"] = "copy"
    source: str
    target: str
    upper: bool = False

    def reads(self) -> list[str]:
        return [self.source]

    def writes(self) -> list[Output]:
        return [Output(self.target)]

    def identity(self) -> dict[str, str]:
        return {"source": file_digest(self.source)}

    def run(self, execution: Execution) -> None:
        text = Path(self.source).read_text()
        write_atomically(Path(self.target), text.upper() if self.upper else text)


def test_an_output_is_up_to_date_only_for_the_step_it_records(tmp_path):
    (tmp_path / "a.txt").write_text("abc")
    step = CopyStep(source=str(tmp_path / "a.txt"), target=str(tmp_path / "b.txt"))
    run_step(step, Execution())
    assert (tmp_path / "b.txt").read_text() == "abc"
    assert (tmp_path / ".b.txt.incasem_step.json").is_file()  # beside the output, not in the working directory

    assert stale(step) is None
    assert stale(CopyStep(source=step.source, target=step.target)) is None  # an equal config is the same step
    assert stale(step.model_copy(update={"upper": True})) == "options changed: upper False -> True"
    (tmp_path / "a.txt").write_text("abd")  # the file the step is defined by changed
    assert stale(step) == "changed: source"
    Output(step.target).record_file().unlink()
    assert stale(step) == f"{step.target} records no step that wrote it"


def test_every_command_that_writes_or_shows_data_is_a_step():
    def commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            return {prefix.strip()}
        return set().union(*(commands(p, f"{prefix} {name}") for name, p in subparsers[0].choices.items()))

    not_steps = {"demo", "pyramid", "run"}  # the demo and pipelines run steps; pyramid levels live inside a dataset
    assert set(STEP_TYPES) == commands(build_parser()) - not_steps
    assert all(step.model_fields["command"].default == command for command, step in STEP_TYPES.items())


@pytest.mark.parametrize("roi", [[1, 2, 3, 4, 5, 6], "1 2 3 4 5 6"])
def test_roi_is_short_for_its_offset_and_shape(roi):
    step = ClaheStep(input="c.zarr/volumes/raw", output="c.zarr/volumes/x", roi=roi)
    assert (step.roi_offset, step.roi_shape) == ((1, 2, 3), (4, 5, 6))
    with pytest.raises(UserError, match="roi \\[1, 2\\]: give 6 numbers"):
        ClaheStep(input="c.zarr/volumes/raw", output="c.zarr/volumes/x", roi=[1, 2])


def test_a_stages_execution_keys_make_its_launcher():
    execution = ExecutionSpec.model_validate({"workers": 3, "max_restarts": 4}).execution(progress=False)
    assert execution.workers == 3 and not execution.progress
    assert isinstance(execution.launcher, LocalLauncher) and execution.launcher.max_restarts == 4
