"""The one way to call ``bigmodel`` in tests: :func:`run_cli` in this process, through the
console script's entry point (``run_main``), or :func:`run_subprocess` as a real process
(exit codes, signals, imports). Both return a :class:`CliResult`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from tests.helpers import FIXTURES, ROOT

__all__ = [
    "BIGMODEL",
    "FIXTURES",
    "ROOT",
    "CliResult",
    "assert_one_line_error",
    "run_cli",
    "run_subprocess",
]

BIGMODEL = [sys.executable, "-m", "bigmodel_cli"]  # the command line of a real process


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike[str]) -> CliResult:
    """Run ``bigmodel ARGS`` in this process (fast), through the same entry point as the
    console script, and capture both streams."""
    from bigmodel_cli.cli import run_main

    with CliRunner().isolation() as streams:
        code = run_main([str(a) for a in args])
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
    return CliResult(code, out, err)


def run_subprocess(
    *args: str | os.PathLike[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> CliResult:
    """Run ``python -m bigmodel_cli ARGS`` as a real process (exit codes, signals, imports)."""
    proc = subprocess.run(
        [*BIGMODEL, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, code: int, *needles: str) -> None:
    """Exit ``code``, one line on stderr containing every needle, no traceback."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
