"""Output for people (rich tables on stdout) and machines (one JSON document on stdout).

Warnings and progress go to stderr so that ``--json`` output stays parseable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported on first use: `--json` runs never load it
    from rich.console import Console

PIPE_WIDTH = 160


def stdout() -> Console:
    """Rich console on stdout; wide when piped, so that grep sees whole names."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(no_color="NO_COLOR" in os.environ or None, highlight=False, width=width)


def print_json(doc: Any) -> None:
    """One JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def print_warnings(lines: Sequence[str]) -> None:
    """Each of the library's warnings as one ``bigmodel: warning:`` line on stderr, the API
    arguments it names (:class:`~bigmodel_cli.errors.Warned`) spelled as flags."""
    from bigmodel_cli.cli_options import as_flags

    for line in lines:
        sys.stderr.write(f"bigmodel: warning: {as_flags(line)}\n")
    sys.stderr.flush()


def print_library_lines(lines: Sequence[str]) -> None:
    """The libraries' own warnings and log lines, as they were held back, on stderr."""
    for line in lines:
        sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def bar(used: int, capacity: int, width: int = 20) -> str:
    """``[#########-----------] 45%`` for a device's fill."""
    if capacity <= 0:
        return "[" + "-" * width + "]   n/a"
    ratio = used / capacity
    filled = min(width, round(ratio * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {ratio:4.0%}"
