"""Byte progress for long work: a rich bar on stderr when it is a terminal, else nothing.

Executors take a :class:`Progress` and call ``start`` / ``advance``; they never import rich.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...


class NullProgress:
    """Progress that shows nothing (not a terminal, ``--json`` piped, tests)."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


class BarProgress:
    """A rich bar on stderr: bytes done / total, speed, ETA. Use as a context manager."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task: object | None = None

    def __enter__(self) -> BarProgress:
        self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.stop()

    def start(self, total: int, description: str) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)  # type: ignore[arg-type]
        self._task = self._bar.add_task(description, total=total)

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, nbytes)  # type: ignore[arg-type]


def progress_for_terminal() -> BarProgress | NullProgress:
    """A bar when stderr is a terminal, otherwise the silent kind."""
    return BarProgress() if sys.stderr.isatty() else NullProgress()


@contextmanager
def shown(progress: Progress | None) -> Iterator[Progress]:
    """``progress`` as given, or (None) a bar on stderr while it is a terminal, as
    huggingface_hub shows its download bars by default."""
    if progress is not None:
        yield progress
        return
    with progress_for_terminal() as bar:
        yield bar
