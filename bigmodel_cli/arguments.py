"""The API's arguments checked for their type, once, where the CLI's values pass too.

Each check takes the value and the argument's name as the API spells it, returns the
value (a sequence of names as a tuple) or raises a :class:`UsageError` naming the argument
and what it accepts, so that the CLI's ``as_flags`` writes it as the flag. bools are real
bools, counts real ints (not bools, not floats) within :data:`MAX_RUN_COUNT`, text real str,
names a list or tuple of str (a bare str is refused: it is not a list of its characters).
Pure functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from bigmodel_cli.errors import UsageError

# A run's dimension (batch, pixels, frames, tokens), a step count or a rank count larger
# than this (2**31 - 1, a C int's largest value) is no real run: refused, the CLI's flags
# and the API's keywords alike (both pass PlanRequest.check).
MAX_RUN_COUNT = 2**31 - 1

PATH = "a path (str or pathlib.Path)"
Check = Callable[[Any, str], Any]
R = TypeVar("R")


def _refuse(name: str, value: Any, accepts: str) -> UsageError:
    return UsageError(f"{name} must be {accepts}, not {value!r}", argument=name)


def flag(value: Any, name: str) -> bool:
    """``value`` when it is True or False (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise _refuse(name, value, "True or False")
    return value


def count(value: Any, name: str, least: int = 1) -> int | None:
    """None, or a whole number (an int, not a bool) from ``least`` to :data:`MAX_RUN_COUNT`."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= MAX_RUN_COUNT:
        raise _refuse(name, value, _whole(least))
    return value


def whole(value: Any, name: str) -> int:
    """A :func:`count` that must be given (None refused)."""
    if value is None:
        raise _refuse(name, value, _whole(1))
    count(value, name)
    return int(value)


def _whole(least: int) -> str:
    return f"at least {least} and at most {MAX_RUN_COUNT}, a whole number (int)"


def seed(value: Any, name: str) -> int:
    """A random seed: a whole number from 0 below 2**64 (what ``torch.manual_seed`` takes)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise _refuse(name, value, "a whole number from 0 to 2**64 - 1")
    return value


def text(value: Any, name: str) -> str | None:
    """None, or a str."""
    if value is not None and not isinstance(value, str):
        raise _refuse(name, value, "a str (or None)")
    return value


def names(value: Any, name: str) -> tuple[str, ...]:
    """A list or tuple of str (None: none), as a tuple."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _refuse(name, value, "a list of names (str), such as ['lm_head']")
    return tuple(value)


def path(value: Any, name: str) -> str | os.PathLike[str] | None:
    """None, or a path: a str or an ``os.PathLike`` (``pathlib.Path``) that the system
    can take (no NUL byte, no lone surrogate)."""
    if value is None:
        return None
    try:
        usable = isinstance(value, str | os.PathLike) and b"\0" not in os.fsencode(value)
    except (TypeError, UnicodeEncodeError):
        usable = False
    if not usable:
        raise _refuse(name, value, PATH + " without NUL bytes or lone surrogates")
    return value


def progress(value: Any, name: str) -> Any:
    """None, or a progress bar: an object with ``start(total, description)`` and
    ``advance(nbytes)`` (:class:`bigmodel_cli.progress.Progress`)."""
    if value is not None and not all(callable(getattr(value, m, None)) for m in PROGRESS):
        raise TypeError(
            f"{name} must be a progress bar (with start(total, description) and "
            f"advance(nbytes) methods) or None, not {value!r}"
        )
    return value


PROGRESS = ("start", "advance")


def file(value: Any, name: str) -> Path:
    """A path that must be given, as a :class:`~pathlib.Path`."""
    if value is None:
        raise _refuse(name, value, PATH)
    path(value, name)
    return Path(value)


def check_fields(record: Any, checks: Mapping[str, Check]) -> None:
    """Each field of ``record`` named in ``checks`` through its check."""
    for name, check in checks.items():
        check(getattr(record, name), name)


def record_or_keywords(cls: type[R], request: R | None, options: Mapping[str, Any]) -> R:
    """``request`` (a ``cls``), or a ``cls`` made of ``options``: never both, never another
    type as ``request`` (a dict given positionally is refused, naming ``request``)."""
    if request is not None and options:
        raise TypeError(f"give a {cls.__name__} or keywords, not both ({', '.join(options)})")
    if request is not None and not isinstance(request, cls):
        raise TypeError(
            f"request must be a {cls.__name__} (or give its fields as keywords), "
            f"not {type(request).__name__} {request!r}"
        )
    return request if request is not None else cls(**options)
