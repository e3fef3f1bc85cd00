"""What a SOURCE holds: a :class:`Checkpoint` of :class:`Component` records, each with its
tensors in byte order, and where it came from (:class:`HubSource`); its
:func:`fingerprint`. Built by :mod:`.discover` (a local folder or file) and
:mod:`.resolve` (a repo id)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bigmodel_cli.formats import Layout, TensorInfo
from bigmodel_cli.formats.base import TensorSum
from bigmodel_cli.formats.index import Index
from bigmodel_cli.sizes import format_size


@dataclass(frozen=True)
class Component(TensorSum):
    """One model of a checkpoint (a pipeline's ``unet``, or the only model)."""

    name: str
    folder: Path
    layout: Layout
    weights_name: str
    files: tuple[Path, ...]
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None
    index: Index | None = None
    library: tuple[str, str] | None = None


@dataclass(frozen=True)
class Checkpoint:
    """What a SOURCE holds. ``root`` is the folder whose non-weight files belong to it."""

    source: Path
    root: Path
    kind: Literal["file", "model", "pipeline"]
    components: tuple[Component, ...]
    skipped: tuple[str, ...] = ()
    variant: str | None = None
    repo: HubSource | None = None  # read from a Hugging Face repo id (cache or Hub)
    notes: tuple[str, ...] = ()  # what a training checkpoint's reader left out or renamed

    @property
    def origin(self) -> str:
        """What the user named: the path, or ``org/name@commit`` for a repo."""
        return self.repo.label if self.repo is not None else str(self.source)


@dataclass(frozen=True)
class HubSource:
    """Where a repo id was read from: its commit, and the Hub's bytes when not cached."""

    repo_id: str
    commit: str
    remote: bool = False  # headers read over HTTP (a mirror), not the downloaded files
    headers_fetched: int = 0
    bytes_fetched: int = 0
    repaired: str | None = None  # a damaged mirror built again, and why

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit}"

    @property
    def note(self) -> str:
        """Where the figures came from, for people."""
        return self._source_note + (f"; {self.repaired}" if self.repaired else "")

    @property
    def _source_note(self) -> str:
        if not self.remote:
            return f"read from the Hugging Face cache at {self.commit[:7]}"
        if not self.headers_fetched:
            return f"read from headers cached earlier from the Hub at {self.commit[:7]}"
        return (
            f"read {self.headers_fetched} headers, {format_size(self.bytes_fetched)}, "
            f"from the Hub at {self.commit[:7]}"
        )


def fingerprint(ckpt: Checkpoint) -> str:
    """sha256 over every component's tensor names, dtypes, shapes, files and byte ranges.

    Any change to a header (a re-saved shard, an edited tensor list) changes it; the
    tensor bytes themselves are not read.
    """
    import hashlib

    digest = hashlib.sha256()
    for c in sorted(ckpt.components, key=lambda c: c.name):
        digest.update(f"component {c.name}\n".encode())
        for t in sorted(c.tensors, key=lambda t: t.name):
            digest.update(
                f"{t.name}\t{t.dtype}\t{list(t.shape)}\t{t.file.name}\t{t.start}\t{t.end}\n".encode()
            )
    return "sha256:" + digest.hexdigest()
