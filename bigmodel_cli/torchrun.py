"""Running under ``torchrun``: the environment it sets, one process group, and errors agreed.

bigmodel builds no launcher, transport or rendezvous: torchrun starts the processes and
sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (the
node) and the rendezvous address; :class:`Group` initialises torch.distributed from
them. Outside torchrun none of this runs (:func:`launched` is false) and nothing changes.

Errors stay one line. A step that every rank runs goes through :meth:`Group.agree`: the
ranks exchange their errors, rank 0 prints one line for all (naming the rank when they
differ; through :data:`show_error`, which the CLI sets to print its ``bigmodel: error:``
line, before any rank exits, since torchrun's agent stops the others as soon as one
exits) and every rank exits with that status. A
rank that dies makes the others' next collective fail (gloo sees the closed connection at
once; otherwise after ``BIGMODEL_DIST_TIMEOUT`` seconds, 600 by default): each then exits
non-zero with one line saying it lost contact. torch is imported only inside :class:`Group`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from bigmodel_cli.errors import EXIT_BUG, BigmodelError

T = TypeVar("T")
TIMEOUT_ENV = "BIGMODEL_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
# torchrun's launch arguments as its own API (torch.distributed.run) spells them; an error that
# names them passes them as its arguments, so the CLI writes them as torchrun's flags
TORCHRUN_ARGUMENTS = ("nnodes", "nproc_per_node")
READERS = ("pread", "dcp")  # how a rank reads its byte ranges (run/ranges.py); the first: default
DEFAULT_IDS = "1,2,3,4,5,6,7,8"  # the prompt of --forward under torchrun without --input-ids
_NEEDED = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
# How an agreed error reads: its own text, or as the command line spells it (the CLI sets
# this to its ``as_flags``, which writes an API argument as its --flag) ...
error_text: Callable[[BigmodelError], str] = str


def _unshown(message: str) -> None:
    """A library caller's default: the error is raised on every rank, shown by none."""


# ... and how rank 0 shows it, once for all ranks, before any rank exits (torchrun's agent
# stops the others as soon as one exits): the CLI sets this to write its error line
show_error: Callable[[str], None] = _unshown


def launched() -> bool:
    """Whether this process was started by torchrun (its rank variables are set)."""
    return all(name in os.environ for name in _NEEDED)


@dataclass(frozen=True)
class RankEnv:
    """Who this process is, as torchrun says."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node: int  # GROUP_RANK: the node's index in the rendezvous

    @staticmethod
    def read() -> RankEnv:
        try:
            rank, local, size = (int(os.environ[n]) for n in _NEEDED)
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
            node = int(os.environ.get("GROUP_RANK", rank // max(local_size, 1)))
        except (KeyError, ValueError):
            raise BigmodelError(
                "RANK, LOCAL_RANK and WORLD_SIZE must be integers (start bigmodel with torchrun)"
            ) from None
        return RankEnv(rank, local, size, local_size, node)


class RankLost(BigmodelError):
    """Another rank stopped answering: it failed or was killed (exit 1, one line)."""

    exit_code = EXIT_BUG


class ReportedElsewhere(BigmodelError):
    """An error rank 0 has printed for every rank: exit with its status, print nothing."""

    shown = False

    def __init__(self, exit_code: int, message: str = "reported by rank 0") -> None:
        super().__init__(message)
        self.exit_code = exit_code


def timeout() -> float:
    """Seconds a collective waits for the other ranks (``BIGMODEL_DIST_TIMEOUT``)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise BigmodelError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    return seconds if seconds > 0 else DEFAULT_TIMEOUT


def combined(errors: Sequence[tuple[str, int] | None]) -> tuple[str, int] | None:
    """One line for the ranks' errors (``(message, exit status)`` or None per rank)."""
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not failed:
        return None
    first_rank, (message, code) = failed[0]
    if all(e == (message, code) for _, e in failed) and len(failed) == len(errors):
        return message, code
    others = len({e for _, e in failed if e != (message, code)})
    tail = (
        f" (and {others} other error{'s' if others > 1 else ''} on other ranks)" if others else ""
    )
    return f"rank {first_rank}: {message}{tail}", code


class Group:
    """The default process group, from torchrun's environment, for one command."""

    def __init__(self, device: str | None = None) -> None:
        self.env = RankEnv.read()
        self.device = device  # "cuda": this rank's GPU is cuda:LOCAL_RANK; None: if it has one

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def size(self) -> int:
        return self.env.world_size

    def __enter__(self) -> Group:
        import torch
        import torch.distributed as dist

        kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout())}
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if self.device is None:
            self.device = "cuda" if self.env.local_rank < gpus else "cpu"
        backend = "gloo"
        if self.device == "cuda":  # objects over gloo, GPU tensors over nccl
            torch.cuda.set_device(self.env.local_rank)
            kwargs["device_id"] = torch.device("cuda", self.env.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        with self.contact("joining the process group"):
            dist.init_process_group(backend=backend, **kwargs)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    @contextmanager
    def contact(self, doing: str) -> Iterator[None]:
        """Collective failures (a rank died, a timeout) as one :class:`RankLost` line."""
        try:
            yield
        except BigmodelError:
            raise
        except (RuntimeError, ValueError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise RankLost(
                f"rank {self.rank}: lost contact with the other ranks while {doing} "
                f"(one of them failed or was killed; {first})"
            ) from None

    def gather(self, value: T, doing: str) -> list[T]:
        """``value`` from every rank, in rank order, on every rank."""
        import torch.distributed as dist

        found: list[Any] = [None] * self.size
        with self.contact(doing):
            dist.all_gather_object(found, value)
        return found

    def agree(self, step: Callable[[], T], doing: str) -> T:
        """Run ``step`` on every rank; if it fails anywhere, every rank raises, and only
        rank 0's error is shown (one line for all)."""
        result: T | None = None
        error: tuple[str, int] | None = None
        try:
            result = step()
        except BigmodelError as exc:
            error = (error_text(exc), exc.exit_code)
        found = combined(self.gather(error, doing))
        if found is not None:
            message, code = found
            if self.rank == 0:  # shown now, before any rank exits
                show_error(message)
            self.gather(None, "reporting an error")
            raise ReportedElsewhere(code, message)
        return result  # type: ignore[return-value]

    def broadcast(self, value: T, doing: str) -> T:
        """Rank 0's ``value`` on every rank."""
        import torch.distributed as dist

        box: list[Any] = [value if self.rank == 0 else None]
        with self.contact(doing):
            dist.broadcast_object_list(box, src=0)
        return box[0]
