"""What ``bigmodel inspect`` reports: per-component totals, dtype mix and blocks (pure)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bigmodel_cli.checkpoint.blocks import group_blocks
from bigmodel_cli.checkpoint.checkpoint import Checkpoint, Component
from bigmodel_cli.sizes import DTYPES, DType, bytes_at


@dataclass(frozen=True)
class ComponentSummary:
    name: str
    layout: str
    files: tuple[str, ...]
    file_bytes: int
    tensors: int
    parameters: int
    bytes: int
    bytes_at_dtype: int
    dtypes: dict[str, int]
    largest_tensor: tuple[str, int]
    blocks: dict[str, int]
    library: tuple[str, str] | None = None


@dataclass(frozen=True)
class CheckpointSummary:
    source: str
    kind: str
    dtype: str | None
    components: tuple[ComponentSummary, ...]
    skipped: tuple[str, ...] = field(default=())
    checkpoint: Checkpoint | None = field(default=None, repr=False, compare=False)
    # component -> stored name -> the name its library builds, where they differ (--tensors)
    built: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def total(self, attribute: str) -> int:
        return sum(int(getattr(c, attribute)) for c in self.components)


def summarize_component(
    c: Component, target: DType | None, root: Path | None = None
) -> ComponentSummary:
    """``root``: show files relative to it (a repo's snapshot or mirror)."""
    dtypes: dict[str, int] = {}
    blocks: dict[str, int] = {}
    block_names = group_blocks([t.name for t in c.tensors])
    largest = ("", -1)
    for t in c.tensors:
        name = DTYPES[t.dtype].name
        dtypes[name] = dtypes.get(name, 0) + t.numel
        blocks[block_names[t.name]] = blocks.get(block_names[t.name], 0) + t.nbytes
        if t.nbytes > largest[1]:
            largest = (t.name, t.nbytes)
    return ComponentSummary(
        name=c.name,
        layout=c.layout,
        files=tuple(str(f if root is None else f.relative_to(root)) for f in c.files),
        file_bytes=sum(os.path.getsize(f) for f in c.files),
        tensors=len(c.tensors),
        parameters=sum(t.numel for t in c.tensors),
        bytes=c.nbytes,
        bytes_at_dtype=sum(bytes_at(DTYPES[t.dtype], t.numel, target) for t in c.tensors),
        dtypes=dtypes,
        largest_tensor=(largest[0], max(largest[1], 0)),
        blocks=blocks,
        library=c.library,
    )


def summarize(ckpt: Checkpoint, target: DType | None) -> CheckpointSummary:
    root = ckpt.root if ckpt.repo is not None else None
    return CheckpointSummary(
        source=ckpt.origin,
        kind=ckpt.kind,
        dtype=target.name if target else None,
        components=tuple(summarize_component(c, target, root) for c in ckpt.components),
        skipped=ckpt.skipped,
        checkpoint=ckpt,
    )
