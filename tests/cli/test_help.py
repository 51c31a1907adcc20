"""The `mplstm` entry point: every subcommand answers --help, through the installed script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mplstm.cli import COMMAND_MODULES, build_parser


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mplstm", *args], capture_output=True, text=True, timeout=120
    )


def test_top_level_help_lists_every_subcommand() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for name in COMMAND_MODULES:
        assert name in result.stdout


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_every_subcommand_has_help(name: str) -> None:
    result = _run(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mplstm " + name)


def test_console_script_is_installed_on_path_of_the_venv() -> None:
    script = shutil.which("mplstm", path=str(Path(sys.executable).parent))
    assert script is not None, "the `mplstm` console script is missing: reinstall with make venv"


def test_unknown_subcommand_exits_with_usage_error() -> None:
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(["no-such-command"])
    assert excinfo.value.code == 2


def test_core_and_cli_import_without_torch() -> None:
    code = (
        "import sys, mplstm.cli, mplstm.core.errors\n"
        "mplstm.cli.build_parser()\n"
        "assert 'torch' not in sys.modules, 'core/cli imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
