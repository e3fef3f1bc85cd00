"""The one way to call ``bigmodel`` in tests: :func:`run_cli` in this process, through the
console script's entry point (``run_main``), or :func:`run_subprocess` as a real process
(exit codes, signals, imports). Both return a :class:`CliResult`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from tests.helpers import FIXTURES, ROOT

__all__ = [
    "BIGMODEL",
    "FIXTURES",
    "ROOT",
    "CliResult",
    "Hang",
    "assert_one_line_error",
    "run_cli",
    "run_cli_within",
    "run_subprocess",
    "watchdog",
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


class Hang(BaseException):
    """Raised by :func:`watchdog`: a command ran past its time."""


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in this (main) thread when the block runs past ``seconds``; a
    blocking system call (a FIFO's open) is interrupted too."""

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"command still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli_within(seconds: float, *args: str | os.PathLike[str]) -> CliResult:
    """:func:`run_cli`, failing with :class:`Hang` instead of hanging past ``seconds`` (a
    bound on hangs, not a timing assertion)."""
    with watchdog(seconds):
        return run_cli(*args)


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


def run_counting_imports(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None
) -> tuple[CliResult, set[str]]:
    """:func:`run_subprocess` under ``python -X importtime``: the result, and the name of
    every module the process imported (their lines are left in the result's stderr)."""
    profiled = (os.environ if env is None else env) | {"PYTHONPROFILEIMPORTTIME": "1"}
    result = run_subprocess(*args, env=dict(profiled))
    lines = result.stderr.splitlines()
    return result, {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import")}


def assert_one_line_error(result: CliResult, code: int, *needles: str) -> None:
    """Exit ``code``, one line on stderr containing every needle, no traceback."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
