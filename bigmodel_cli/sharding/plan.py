"""What ``shard`` and ``merge`` will write, decided before a byte moves (pure data).

As in huggingface_hub's ``split_state_dict_into_shards_factory``:

- :func:`split_sizes` cuts a list of tensor sizes into shards, greedily, in order;
- :func:`plan_component` turns one checkpoint component into a :class:`ComponentPlan`
  (which tensors go to which file under which name, and the index);
- :func:`plan_write` adds the non-weight files to copy and gives a :class:`WritePlan`,
  which :mod:`bigmodel_cli.sharding.write` executes.

Tensors keep the byte order of the source files, so reads are sequential and
``shard`` followed by ``merge`` gives back the source file byte for byte.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bigmodel_cli.checkpoint import Checkpoint, Component
from bigmodel_cli.checkpoint.names import SAFETENSORS_STEMS, shard_names, variant_of
from bigmodel_cli.errors import BigmodelError, Warned
from bigmodel_cli.formats.base import TensorInfo, TensorSum
from bigmodel_cli.formats.files import link_boundary
from bigmodel_cli.formats.index import index_json
from bigmodel_cli.formats.json import read_config
from bigmodel_cli.formats.safetensors import HeaderEntry
from bigmodel_cli.sizes import DTYPES, DType, cast_to

Mode = Literal["shard", "merge"]


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of an output file: where its bytes are read and what they become.

    ``start``/``end`` are absolute offsets in ``file``; ``-1`` for a pickle source,
    whose tensors are read through torch instead.
    """

    name: str
    shape: tuple[int, ...]
    source_dtype: str
    dtype: str
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return DTYPES[self.dtype].nbytes(math.prod(self.shape))

    @property
    def converts(self) -> bool:
        return self.dtype != self.source_dtype

    @property
    def entry(self) -> HeaderEntry:
        return HeaderEntry(self.name, self.dtype, self.shape)


@dataclass(frozen=True)
class OutputFile(TensorSum):
    """One written ``.safetensors`` file: its name and its tensors in write order."""

    name: str
    tensors: tuple[TensorSlot, ...]


@dataclass(frozen=True)
class ComponentPlan:
    """The files of one component in OUT. ``folder`` is relative to OUT (``""`` or ``unet``)."""

    name: str
    folder: str
    files: tuple[OutputFile, ...]
    metadata: dict[str, str]
    index_name: str | None
    index_extra: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.files)

    @property
    def tensor_count(self) -> int:
        return sum(len(f.tensors) for f in self.files)

    def weight_map(self) -> dict[str, str]:
        return {t.name: f.name for f in self.files for t in f.tensors}

    def index_text(self) -> str | None:
        """The index as Hugging Face writes it, or None for a single file."""
        if self.index_name is None:
            return None
        return index_json(self.weight_map(), self.nbytes, self.index_extra)

    def path(self, name: str) -> str:
        """``name`` relative to OUT."""
        return f"{self.folder}/{name}" if self.folder else name


@dataclass(frozen=True)
class FileCopy:
    """A non-weight file copied as is; ``target`` is relative to OUT."""

    source: Path
    target: str


@dataclass(frozen=True)
class WritePlan:
    """Everything OUT will hold: components, copied files, folders (even empty ones)."""

    source: str
    output: Path
    mode: Mode
    components: tuple[ComponentPlan, ...]
    copies: tuple[FileCopy, ...]
    folders: tuple[str, ...]
    warnings: tuple[str, ...]


# --- pure planning -------------------------------------------------------------------


def split_sizes(sizes: Sequence[int], limit: int | None) -> list[range]:
    """Cut ``sizes`` into consecutive runs of at most ``limit`` bytes each, greedily.

    A size larger than ``limit`` gets a run of its own, as in Hugging Face; unlike
    huggingface_hub it also closes the run before it, so that every shard is a contiguous
    stretch of the source (sequential reads, and ``merge`` restores the source order).
    ``limit=None`` means one run. There is always at least one run (empty for no sizes).
    """
    if limit is None or not sizes:
        return [range(len(sizes))]
    runs: list[range] = []
    first, filled = 0, 0
    for i, size in enumerate(sizes):
        if i > first and (filled + size > limit or size > limit):
            runs.append(range(first, i))
            first, filled = i, 0
        filled += size
    runs.append(range(first, len(sizes)))
    return runs


def output_weights_name(component: Component) -> str:
    """The name ``from_pretrained`` looks for: the source's when it is one of Hugging
    Face's, else ``diffusion_pytorch_model`` for a diffusers model and ``model`` for the
    rest (``pytorch_model.bin`` -> ``model``, ``sd_xl_base.safetensors`` -> ``model``)."""
    if component.weights_name in SAFETENSORS_STEMS:
        return component.weights_name
    config = read_config(component.folder) or {}
    diffusers = component.library is not None and component.library[0] == "diffusers"
    return "diffusion_pytorch_model" if diffusers or "_diffusers_version" in config else "model"


def source_order(tensors: Sequence[TensorInfo]) -> list[TensorInfo]:
    """Tensors in the byte order of their files (files by name: shard numbers ascend)."""
    return sorted(tensors, key=lambda t: (str(t.file), t.start))


def plan_component(
    component: Component,
    folder: str,
    limit: int | None,
    dtype: DType | None,
    variant: str | None,
) -> ComponentPlan:
    """The output files of ``component``: shards of at most ``limit`` bytes (None: one file)."""
    slots = [
        TensorSlot(
            t.name,
            t.shape,
            t.dtype,
            cast_to(DTYPES[t.dtype], dtype).code,
            t.file,
            t.start,
            t.end,
        )
        for t in source_order(component.tensors)
    ]
    runs = split_sizes([s.nbytes for s in slots], limit)
    weights = output_weights_name(component)
    names, index_name = shard_names(weights, variant, len(runs))
    files = tuple(
        OutputFile(name, tuple(slots[i] for i in run))
        for name, run in zip(names, runs, strict=True)
    )
    metadata = dict(component.metadata or {})
    metadata.setdefault("format", "pt")
    extra: dict[str, Any] = {}
    if component.index is not None:
        extra = {k: v for k, v in component.index.metadata.items() if k != "total_size"}
    return ComponentPlan(component.name, folder, files, metadata, index_name, extra)


# --- planning with the file system: what else to copy ---------------------------------


@dataclass
class _CopyWalk:
    boundary: Path
    skip: set[str]
    written: set[str]
    copies: list[FileCopy]
    folders: list[str]
    warnings: list[str]
    weight_folders: set[str] = field(default_factory=set)

    def walk(self, folder: Path, rel: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise BigmodelError(f"cannot list folder ({exc.strerror})", folder) from None
        for entry in entries:
            target = f"{rel}/{entry.name}" if rel else entry.name
            if os.path.abspath(entry.path) in self.skip:
                continue
            if entry.is_symlink():
                self._link(Path(entry.path), target)
            elif entry.is_dir(follow_symlinks=False):
                self.folders.append(target)
                self.walk(Path(entry.path), target)
            elif entry.is_file(follow_symlinks=False):
                self._file(Path(entry.path), target)
            else:
                self.warnings.append(f"not copied: {target} is not a regular file")

    def _link(self, path: Path, target: str) -> None:
        real = Path(os.path.realpath(path))
        if real != self.boundary and self.boundary not in real.parents:
            self.warnings.append(f"not copied: {target} is a link leading outside the source")
        elif real.is_dir():
            self.warnings.append(f"not copied: {target} is a link to a folder")
        elif not real.is_file():
            self.warnings.append(f"not copied: {target} is a broken link")
        else:
            self._file(path, target)

    def _file(self, path: Path, target: str) -> None:
        if is_other_weights(path, self.weight_folders):
            self.warnings.append(
                Warned(
                    f"not copied: {target} (other weights of the same model: another format "
                    "or one of its variants; pass variant to shard that one)",
                    argument="variant",
                )
            )
        elif target in self.written:
            self.warnings.append(f"not copied: {target} (replaced by the new weights)")
        else:
            self.copies.append(FileCopy(path, target))


def plan_write(
    ckpt: Checkpoint, out: Path, mode: Mode, limit: int | None, dtype: DType | None
) -> WritePlan:
    """The full plan: each component's files, plus every other file of the source."""
    variant = ckpt.variant
    if ckpt.kind == "file" and variant is None:
        variant = variant_of(ckpt.source.name, ckpt.source.suffix)
    components = []
    for c in ckpt.components:
        folder = "" if ckpt.kind != "pipeline" else os.path.relpath(c.folder, ckpt.root)
        components.append(plan_component(c, folder, limit, dtype, variant))
    walk = _CopyWalk(link_boundary(ckpt.root), set(), set(), [], [], [])
    for c in ckpt.components:
        walk.weight_folders.add(os.path.abspath(c.folder))
        walk.skip.update(os.path.abspath(f) for f in c.files)
        if c.index is not None:
            walk.skip.add(os.path.abspath(c.index.path))
    for p in components:
        walk.written.update(p.path(f.name) for f in p.files)
        walk.written.update([p.path(p.index_name)] if p.index_name else [])
    if ckpt.kind != "file":
        walk.walk(ckpt.root, "")
    return WritePlan(
        str(ckpt.source),
        out,
        mode,
        tuple(components),
        tuple(walk.copies),
        tuple(walk.folders),
        tuple(walk.warnings),
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")


def is_other_weights(path: Path, weight_folders: set[str]) -> bool:
    """A weights or index file beside a component's own (``pytorch_model.bin`` next to
    ``model.safetensors``, the fp16 variant next to the fp32 one): not part of OUT."""
    if os.path.abspath(path.parent) not in weight_folders:
        return False
    name = path.name
    return name.endswith(WEIGHT_SUFFIXES) or (".index." in name and name.endswith(".json"))
