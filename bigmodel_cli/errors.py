"""The one exception type of the project: a reason, the file it concerns, an exit status."""

from __future__ import annotations

from pathlib import Path

EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_NO_FIT = 3
EXIT_INTERRUPTED = 130


class BigmodelError(Exception):
    """Bad input or a refused operation. The CLI prints ``str(error)`` as one line."""

    exit_code = EXIT_BAD_INPUT
    shown = True  # False: another process (torchrun's rank 0) prints it
    warnings: tuple[str, ...] = ()  # what the failed command would have warned about

    def __init__(
        self,
        reason: str,
        path: str | Path | None = None,
        tensor: str | None = None,
        argument: str | tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else str(path)
        self.tensor = tensor
        # The API argument(s) the reason names, spelled as the API spells them
        # (``max_shard_size``); the CLI rewrites each to its flag (``--max-shard-size``).
        self.argument = argument

    @property
    def arguments(self) -> tuple[str, ...]:
        """The API arguments the reason names (none, one or several)."""
        if self.argument is None:
            return ()
        return (self.argument,) if isinstance(self.argument, str) else self.argument

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        what = f"tensor {self.tensor!r}: " if self.tensor is not None else ""
        return " ".join(f"{where}{what}{self.reason}".split())


class Warned(str):
    """A warning's line that names API arguments (``argument``, as a :class:`BigmodelError`
    does): a str everywhere; the CLI writes each argument as its flag when it prints it."""

    argument: str | tuple[str, ...] | None = None

    def __new__(cls, text: str, argument: str | tuple[str, ...] | None = None) -> Warned:
        made = super().__new__(cls, text)
        made.argument = argument
        return made

    @property
    def arguments(self) -> tuple[str, ...]:
        if self.argument is None:
            return ()
        return (self.argument,) if isinstance(self.argument, str) else self.argument


class UsageError(BigmodelError):
    """A flag value that cannot be understood (``--max-shard-size 5XB``)."""


class FitError(BigmodelError):
    """``--require-fit`` was given and the plan does not fit."""

    exit_code = EXIT_NO_FIT
