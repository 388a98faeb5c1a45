import argparse

import pytest

from incasem_like.cli import build_parser, main
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
