"""Files and names that come from outside: one bounded reader, one safe-path rule, the limits.

Every small file the tool reads (``config.json``, ``model_index.json``, indexes, plans,
kept traces) goes through :func:`read_small_file`: a regular file only (a FIFO, a device,
a socket or a folder is refused without blocking on it), at most a limit of bytes, and,
where the checkpoint folder it belongs to is named, no link leading out of that folder.
Every name that comes from outside (a Hub listing, an index's ``weight_map``, a
``model_index.json`` entry) becomes a path through :func:`safe_path`, and nowhere else.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeGuard

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.sizes import MAX_SIZE

MAX_HEADER_BYTES = 100_000_000  # a safetensors header's JSON (the spec's 100 MB)
MAX_INDEX_BYTES = 100_000_000  # a *.safetensors.index.json
MAX_PLAN_BYTES = 100_000_000  # a plan file (one over many ranks lists every read)
MAX_JSON_BYTES = 10_000_000  # any other small JSON file: config.json, model_index.json, a trace
MAX_DCP_METADATA_BYTES = 1 << 30  # a DCP .metadata: a million tensors' chunks stay far below
MAX_TAG_BYTES = 4096  # DeepSpeed's `latest` file: one folder name

_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def is_count(value: Any, positive: bool = False) -> TypeGuard[int]:
    """An int that is not a bool, at least 0 (1 when ``positive``) and at most
    :data:`~bigmodel_cli.sizes.MAX_SIZE`: a byte count, an index or a size read from a file."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and int(positive) <= value <= MAX_SIZE
    )


def link_boundary(folder: Path) -> Path:
    """Links in ``folder`` may lead anywhere below the folder returned: ``folder`` itself,
    or, inside a Hugging Face cache snapshot (whose files link to ``../../blobs/``), the
    repo's cache folder."""
    real = Path(os.path.realpath(folder))
    for p in (real, *real.parents):
        if p.parent.name == "snapshots" and (p.parent.parent / "blobs").is_dir():
            return p.parent.parent
    return real


def leads_outside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (a link, or below one) resolves outside ``folder``'s boundary."""
    boundary = link_boundary(folder)
    real = Path(os.path.realpath(path))
    return real != boundary and boundary not in real.parents


def safe_path(folder: Path, name: str, named_in: Path | str | None, what: str = "name") -> Path:
    """``folder/name`` for a name that came from outside: plain relative parts separated by
    ``/``, none empty, ``.`` or ``..``, no ``\\`` or NUL, not absolute, and no link on the
    way leading out of ``folder``. ``named_in`` (the file or repo that named it) is the
    error's path."""
    parts = name.split("/")
    if (
        not name
        or os.path.isabs(name)
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise BigmodelError(
            f"{what} {name!r} is not a plain relative name inside the folder", named_in
        )
    path = folder.joinpath(*parts)
    if leads_outside(path, folder):
        raise BigmodelError(f"{what} {name!r} is a link leading outside {folder}", named_in)
    return path


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: Path, what: str) -> int:
    """A descriptor of ``path``, which must be a regular file. Opened without blocking (a
    FIFO would wait for a writer), checked with ``fstat``, then made blocking again."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        raise BigmodelError(f"cannot read {what} ({exc.strerror or exc})", path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BigmodelError(f"{what} is {_kind(mode)}, not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a regular file (for readers that open it themselves)."""
    os.close(open_regular(path, what))


def read_small_file(path: Path, what: str, limit: int, inside: Path | None = None) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes; with ``inside``,
    one that is not a link leading out of that folder. Opened without blocking, so a FIFO
    or a device is refused at once; every refusal is one :class:`BigmodelError` naming
    ``path``."""
    if inside is not None and leads_outside(path, inside):
        raise BigmodelError(f"{what} is a link leading outside {inside}", path)
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise BigmodelError(f"{what} is {size} bytes, more than {limit}", path)
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise BigmodelError(f"cannot read {what} ({exc.strerror or exc})", path) from None
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while being read
        raise BigmodelError(f"{what} is more than {limit} bytes", path)
    return data


def _read_at_most(fd: int, n: int) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def is_regular_or_absent(path: Path) -> bool:
    """Whether ``path`` may be replaced by a written file: absent, or a regular file (not
    a link, a FIFO, a device, a socket or a folder)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True


@contextmanager
def path_errors(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """What the system refuses of a path given from outside (a name part over 255 bytes,
    a link loop, a file where a folder should be, a NUL byte) as one :class:`BigmodelError`
    naming ``path``, where the path is first used; anything else passes on."""
    where = None if path is None else Path(path)
    try:
        yield
    except OSError as exc:
        raise BigmodelError(f"cannot use this path ({exc.strerror or exc})", where) from None
    except RuntimeError as exc:
        if "symlink loop" not in str(exc).lower():
            raise
        raise BigmodelError("cannot use this path (a symlink loop)", where) from None
    except ValueError as exc:
        if "null byte" not in str(exc) and "surrogate" not in str(exc):
            raise
        raise BigmodelError(
            "cannot use this path (a NUL byte or an invalid character)", where
        ) from None
