"""The output folder: where it goes, and writing it so it appears complete or not at all.

Work happens in ``.OUT.bigmodel-tmp-<pid>`` beside OUT (same file system, so the final
``rename`` is atomic). :meth:`AtomicFolder.commit` renames it into place; with
``--force`` an existing OUT is moved aside only then, and removed after, and only when it
is what this tool writes (:func:`replaceable`): an empty folder or a checkpoint / pipeline
layout, never someone's photos, the current folder or a folder holding it. On any error
or interrupt the temporary folder is removed. A lock file ``.OUT.bigmodel-lock``
(``flock``, released by the kernel even on SIGKILL) lets one run at a time write OUT;
the run holding it removes temporary folders that a killed run left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from bigmodel_cli.checkpoint.names import variant_of
from bigmodel_cli.errors import BigmodelError, UsageError
from bigmodel_cli.formats import FORMATS
from bigmodel_cli.formats.pickle import PICKLE

if TYPE_CHECKING:
    from bigmodel_cli.checkpoint import Checkpoint

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, the rest still holds
    fcntl = None  # type: ignore[assignment]

TMP_TAG = ".bigmodel-tmp-"
OLD_TAG = ".bigmodel-old-"
LOCK_TAG = ".bigmodel-lock"
WEIGHT_SUFFIXES = tuple(suffix for fmt in FORMATS for suffix in fmt.suffixes)


def default_output(source: str | None, ckpt: Checkpoint, mode: str) -> Path:
    """``unet/`` -> ``unet-sharded`` beside it; ``x.safetensors`` -> ``x-sharded``;
    a Hugging Face repo id ``org/name`` -> ``name-sharded`` in the current folder."""
    suffix = "-sharded" if mode == "shard" else "-merged"
    if source is not None and not os.path.lexists(source):
        return Path(source.rstrip("/").rsplit("/", 1)[-1] + suffix)
    base = Path(os.path.abspath(source if source is not None else os.curdir))
    name = base.stem if ckpt.kind == "file" else base.name
    if not name:
        raise UsageError("cannot name an output folder for this source; give -o OUT", base)
    return base.with_name(name + suffix)


def check_output(ckpt: Checkpoint, out: Path) -> None:
    """Refuse an OUT equal to SOURCE, inside it, or holding it (``--force`` would delete it)."""
    where = Path(os.path.realpath(out))
    source = Path(os.path.realpath(ckpt.source))
    if where == source:
        raise BigmodelError("OUT is the source itself; choose another -o", out)
    if ckpt.kind != "file" and source in where.parents:
        raise BigmodelError(f"OUT is inside the source {ckpt.source}; choose another -o", out)
    inputs = [source] + [Path(os.path.realpath(f)) for c in ckpt.components for f in c.files]
    if any(where in p.parents for p in inputs):
        raise BigmodelError(f"OUT contains the source {ckpt.source}; choose another -o", out)


def replaceable(out: Path) -> str | None:
    """Why ``--force`` may not replace the existing ``out``, or None when it may: an empty
    folder, or one the checkpoint reader reads as a checkpoint or pipeline (every weights
    file with a valid header, its index complete, no link leading out), that is neither
    the current folder nor holds it. A weights-like name among someone's files is not
    enough."""
    where = Path(os.path.realpath(out))
    here = Path(os.path.realpath(os.curdir))
    if where == here or where in here.parents:
        return "is the current folder or holds it; force never replaces that"
    if os.path.islink(out) or not where.is_dir():
        return "exists and is not a folder this tool wrote; force replaces only those"
    try:
        names = os.listdir(where)
    except OSError as exc:
        return f"cannot list it ({exc.strerror})"
    if not names:
        return None
    why = _not_a_checkpoint(where)
    if why is None:
        return None
    return (
        f"holds no checkpoint ({why}); force replaces only an empty folder or a checkpoint "
        "this tool can read: remove it yourself or choose another -o"
    )


def _not_a_checkpoint(folder: Path) -> str | None:
    """Why ``folder`` does not read as a checkpoint or pipeline of the kind this tool
    writes (safetensors, in any variant its weights carry), or None when it does. A git
    repository, or pickle weights (which this tool never writes, and which would need torch
    to read), are refused before anything is read."""
    from bigmodel_cli.checkpoint.discover import read_path  # reads headers: only for --force

    files = [p.name for p in folder.iterdir()] + [p.name for p in folder.glob("*/*")]
    if ".git" in files:
        return "a git repository"
    pickles = [n for n in files if n.endswith(PICKLE.suffixes)]
    if pickles:
        return f"{pickles[0]}: pickle weights, which this tool never writes"
    variants = {variant_of(n, s) for n in files for s in WEIGHT_SUFFIXES if n.endswith(s)}
    first = None
    for variant in [None, *sorted(v for v in variants if v is not None)]:
        try:
            read_path(folder, folder.name, variant)
            return None
        except BigmodelError as exc:
            first = first or str(exc)
    return first


def sibling(out: Path, tag: str) -> Path:
    """``/a/OUT`` -> ``/a/.OUT<tag>``: a hidden name beside OUT."""
    return out.parent / f".{out.name}{tag}"


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so renames and cleanup run to the end."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _remove(path: Path) -> None:
    if not os.path.lexists(path):  # unlink would say EROFS, not ENOENT, on a read-only fs
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class AtomicFolder:
    """``with AtomicFolder(out, force) as folder: write into folder.path; folder.commit()``."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out = Path(os.path.abspath(out))
        self.force = force
        self.path = sibling(self.out, f"{TMP_TAG}{os.getpid()}")
        self._lock_path = sibling(self.out, LOCK_TAG)
        self._lock_fd: int | None = None
        self._made: list[Path] = []
        self._committed = False

    def __enter__(self) -> AtomicFolder:
        try:
            with signals_deferred():  # an interrupt here still cleans up, below
                self._refuse_existing()
                self._make_parents()
                self._lock()
                self._clean_stale()
                self._refuse_existing()
                self.path.mkdir()
        except BaseException as exc:
            self._release()
            if isinstance(exc, OSError):
                reason = f"cannot create output folder ({exc.strerror})"
                raise BigmodelError(reason, self.out) from None
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def commit(self) -> None:
        """Move the finished folder to OUT (replacing the old OUT when ``force``)."""
        with signals_deferred():
            try:
                self._move_into_place()
            except OSError as exc:
                reason = f"cannot move the finished folder into place ({exc.strerror})"
                raise BigmodelError(reason, self.out) from None
            self._committed = True

    def _move_into_place(self) -> None:
        if not os.path.lexists(self.out):
            os.rename(self.path, self.out)
        elif not self.force:
            raise BigmodelError(
                "already exists (created during this run); use force", self.out, argument="force"
            )
        elif (why := replaceable(self.out)) is not None:
            raise BigmodelError(why, self.out, argument="force")
        else:
            old = sibling(self.out, f"{OLD_TAG}{os.getpid()}")
            os.rename(self.out, old)
            try:
                os.rename(self.path, self.out)
            except BaseException:
                os.rename(old, self.out)
                raise
            _remove(old)

    def _refuse_existing(self) -> None:
        if not os.path.lexists(self.out):
            return
        if not self.force:
            raise BigmodelError(
                "already exists; use force to replace it", self.out, argument="force"
            )
        why = replaceable(self.out)
        if why is not None:
            raise BigmodelError(why, self.out, argument="force")

    def _make_parents(self) -> None:
        missing = [p for p in reversed(self.out.parents) if not p.exists()]
        for p in missing:
            p.mkdir()
            self._made.append(p)

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        while True:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BigmodelError(
                    "another bigmodel run is writing this folder now; wait for it to finish",
                    self.out,
                ) from None
            except OSError:
                pass  # no locking on this file system: go on without
            try:
                same = os.stat(self._lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)  # the holder removed it as we opened it: lock the new one

    def _clean_stale(self) -> None:
        """Remove what a killed run left (we hold the lock, so no live run owns it)."""
        prefix = f".{self.out.name}"
        leftovers = [
            p
            for p in self.out.parent.iterdir()
            if p.name.startswith(prefix + TMP_TAG) or p.name.startswith(prefix + OLD_TAG)
        ]
        for p in sorted(leftovers):
            if p.name.startswith(prefix + OLD_TAG) and not os.path.lexists(self.out):
                os.rename(p, self.out)  # killed between the two renames of a --force: restore
            else:
                _remove(p)

    def _release(self) -> None:
        with signals_deferred():
            if not self._committed:
                _remove(self.path)
            if self._lock_fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._lock_path.unlink()
                os.close(self._lock_fd)
                self._lock_fd = None
            if not self._committed:
                for p in reversed(self._made):  # parents this run created, if still empty
                    with contextlib.suppress(OSError):
                        p.rmdir()
