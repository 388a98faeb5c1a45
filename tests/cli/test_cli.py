import argparse
import subprocess
import sys

import pytest

from incasem_like.cli.main import build_parser, main
from tests.conftest import run_cli


def subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_main_help_lists_commands_with_an_example():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "convert" in result.stdout


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"incasem-like {command} " in capsys.readouterr().out.split("examples:")[1]


def test_unknown_command_fails():
    assert run_cli("frobnicate").returncode == 2


ABANDONED_TASK_AFTER_AN_ERROR = """
import asyncio, gc, sys
from incasem_like.cli.main import main

loop = asyncio.new_event_loop()
task = loop.create_task(asyncio.sleep(3600))  # like zarr's other chunk reads when one chunk fails to decode
loop.run_until_complete(asyncio.sleep(0))
never_started = asyncio.sleep(3600)  # like the reads zarr had not yet scheduled
code = main(["clahe", "missing.zarr/volumes/raw", "out.zarr/volumes/clahe"])
del task, loop, never_started
gc.collect()  # destroys the pending task and the coroutine, as interpreter exit does
sys.exit(code)
"""


def test_an_error_stays_one_line_when_pending_reads_are_abandoned(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", ABANDONED_TASK_AFTER_AN_ERROR], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "incasem-like: error: missing.zarr/volumes/raw: no such dataset (expected an OME-Zarr group with s0/)"
    ]
