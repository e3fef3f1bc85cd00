"""One rank's byte ranges: which tensors they hold (pure), and reading them, counted.

:func:`rank_share` matches a rank's ``reads`` in the plan with the checkpoint's tensors:
every range must be whole tensors, back to back. Two readers then fetch them, each
counting the bytes at its read calls:

- ``pread`` (the default): ``os.preadv`` over a few threads, on cpu straight into the
  memory the tensors keep (one buffer per range, tensors are views of it), on a GPU
  through the one GPU reader (:class:`~.gpu_reader.StagedReader`, which also serves Hub
  ranges: :func:`read_ranges`). Peak memory is the rank's bytes;
- ``dcp``: ``torch.distributed.checkpoint`` with its Hugging Face safetensors reader
  (``HuggingFaceStorageReader``), loading into tensors made for this rank's names. It copies
  out of a mapping of the files, so a rank's peak RSS counts its bytes twice (``make bench``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats import TensorInfo
from bigmodel_cli.placement.world import RankPlan
from bigmodel_cli.progress import Progress
from bigmodel_cli.run.gpu_reader import (
    STAGE,
    FileSource,
    Source,
    StagedReader,
    host_bytes,
    read_pieces,
)
from bigmodel_cli.run.load import cast
from bigmodel_cli.sizes import DType, torch_dtype
from bigmodel_cli.torchrun import READERS

if TYPE_CHECKING:
    import torch

CHUNK = 64 << 20  # bytes per Range request to the Hub


@dataclass(frozen=True)
class RangeRead:
    """One range of a rank's reads and the tensors it holds, back to back."""

    file: Path
    offset: int
    length: int
    tensors: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class Share:
    """What one rank loads: its ranges, each with its tensors (component names kept)."""

    ranges: tuple[RangeRead, ...]
    components: Mapping[tuple[Path, str], str]  # (file, tensor) -> component

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(t for r in self.ranges for t in r.tensors)

    @property
    def nbytes(self) -> int:
        return sum(r.length for r in self.ranges)


def rank_share(ckpt: Checkpoint, rank: RankPlan, plan_path: Path | None) -> Share:
    """The tensors inside ``rank.reads``; a range that is not whole tensors is refused."""
    by_file: dict[str, list[tuple[str, TensorInfo]]] = {}
    for c in ckpt.components:
        for t in c.tensors:
            by_file.setdefault(os.path.relpath(t.file, ckpt.root), []).append((c.name, t))
    ranges, components = [], {}
    for name, spans in rank.reads.items():
        found = sorted(by_file.get(name, []), key=lambda item: item[1].start)
        if not found:
            raise BigmodelError(
                f"plan rank {rank.rank} reads {name}, not a file of the checkpoint", plan_path
            )
        for offset, length in spans:
            inside = [(c, t) for c, t in found if offset <= t.start and t.end <= offset + length]
            covered = offset
            for _, t in inside:
                covered = t.end if t.start == covered else -1
            if covered != offset + length:
                raise BigmodelError(
                    f"plan rank {rank.rank} reads bytes {offset}..{offset + length} of {name}, "
                    "which are not whole tensors of the checkpoint; re-run bigmodel plan",
                    plan_path,
                )
            components.update({(t.file, t.name): c for c, t in inside})
            ranges.append(RangeRead(found[0][1].file, offset, length, tuple(t for _, t in inside)))
    return Share(tuple(ranges), components)


# ---------------------------------------------------------------- the readers (executors)


@dataclass
class Read:
    """What a reader returns (internal, mutable): tensors in range order and the count."""

    tensors: list[tuple[TensorInfo, torch.Tensor]]
    bytes_read: int = 0
    seconds: float = 0.0


def tensor_of(buf: torch.Tensor, at: int, info: TensorInfo) -> torch.Tensor:
    """``info``'s tensor as a view of ``buf`` (a copy when its offset is not aligned)."""
    piece = buf[at : at + info.nbytes]
    dtype = torch_dtype(info.dtype)
    if at % max(piece.element_size(), dtype.itemsize):
        piece = piece.clone()
    return piece.view(dtype).reshape(info.shape)


def read_threads() -> int:
    """Threads a rank reads with: ``BIGMODEL_READ_THREADS``, else its share of this node's
    cores (the cores this process may use over the ranks on the node), 1 to 4."""
    given = os.environ.get("BIGMODEL_READ_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, min(4, (cores or 1) // max(1, int(local) if local.isdigit() else 1)))


SourceOf = Callable[[RangeRead], AbstractContextManager[Source]]


def read_ranges(
    share: Share,
    source_of: SourceOf,
    device: str,
    target: DType | None,
    progress: Progress,
    reader: StagedReader | None = None,
) -> Read:
    """Every range of ``share`` from its source, counted at the read calls. On cpu
    straight into the memory the tensors keep (one buffer per range, the tensors views of
    it: the rank's peak is its bytes), :func:`read_threads` reads at once; on a GPU (or
    when given a ``reader``) through the :class:`~.gpu_reader.StagedReader`, each tensor
    its own allocation."""
    import torch

    out = Read([])
    began = time.perf_counter()
    largest = max((r.length for r in share.ranges), default=0)
    if reader is None and device != "cpu" and largest:
        reader = StagedReader(threads=read_threads(), size=min(STAGE, largest))
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(read_threads()))
        if reader is not None:
            stack.enter_context(reader)
        for r in share.ranges:
            with source_of(r) as source:
                if reader is None:
                    buf = torch.empty(r.length, dtype=torch.uint8)
                    view = host_bytes(buf)
                    end = r.offset + r.length
                    out.bytes_read += read_pieces(
                        pool, source, view, r.offset, end, progress.advance
                    )
                    loaded = [tensor_of(buf, t.start - r.offset, t) for t in r.tensors]
                else:
                    loaded = reader.load(source, r.tensors, device, progress.advance)
            out.tensors += [
                (t, cast(x, t.dtype, target)) for t, x in zip(r.tensors, loaded, strict=True)
            ]
        if reader is not None:
            out.bytes_read += reader.bytes_read
    if device != "cpu":
        torch.cuda.synchronize(device)
    out.seconds = time.perf_counter() - began
    return out


@contextmanager
def file_source(r: RangeRead) -> Iterator[Source]:
    """The local file holding ``r``."""
    with FileSource(r.file) as source:
        yield source


def read_pread(share: Share, device: str, target: DType | None, progress: Progress) -> Read:
    """Every range with ``preadv`` (:func:`read_ranges` from the local files)."""
    return read_ranges(share, file_source, device, target, progress)


def read_dcp(share: Share, device: str, target: DType | None, progress: Progress) -> Read:
    """Every tensor through ``torch.distributed.checkpoint.load`` and its Hugging Face
    safetensors reader, one call per folder (each rank on its own: ``no_dist``)."""
    import torch
    import torch.distributed.checkpoint as dcp

    out = Read([])
    began = time.perf_counter()
    folders: dict[Path, list[TensorInfo]] = {}
    for info in share.tensors:
        folders.setdefault(info.file.parent, []).append(info)
    for folder, infos in folders.items():
        _check_dcp_folder(folder)
        state = {
            i.name: torch.empty(i.shape, dtype=torch_dtype(i.dtype), device=device) for i in infos
        }
        reader = _counting_reader()(str(folder))
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=reader, no_dist=True)
        out.bytes_read += reader.bytes_read
        progress.advance(reader.bytes_read)
        out.tensors += [(i, cast(state[i.name], i.dtype, target)) for i in infos]
    out.seconds = time.perf_counter() - began
    return out


def _check_dcp_folder(folder: Path) -> None:
    """The dcp reader takes every ``*.safetensors`` of a folder as one checkpoint: another
    variant beside the component's files would be read as the same tensors."""
    variants = sorted(p.name for p in folder.glob("*.safetensors") if p.name.count(".") > 1)
    if variants:
        raise BigmodelError(
            f"reader dcp reads every .safetensors file of a folder, and this one also holds "
            f"{variants[0]}; use reader pread",
            folder,
            argument="reader",
        )


def _counting_reader() -> Any:
    """``HuggingFaceStorageReader`` counting the bytes of every tensor it reads."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    class Counting(HuggingFaceStorageReader):
        bytes_read = 0

        def _process_read_request(self, f: Any, req: Any, planner: Any) -> None:
            super()._process_read_request(f, req, planner)
            dtype = self.storage_data[req.storage_index].dtype
            self.bytes_read += math.prod(req.lengths) * dtype.itemsize

    return Counting


def read_share(
    share: Share, reader: str, device: str, target: DType | None, progress: Progress
) -> Read:
    progress.start(share.nbytes, "loading")
    return (read_dcp if reader == "dcp" else read_pread)(share, device, target, progress)


def by_name(read: Read, share: Share) -> dict[tuple[str, str], torch.Tensor]:
    """(component, tensor name) -> the loaded tensor."""
    return {(share.components[(i.file, i.name)], i.name): t for i, t in read.tensors}


__all__: Sequence[str] = ("READERS", "Read", "Share", "by_name", "rank_share", "read_share")
