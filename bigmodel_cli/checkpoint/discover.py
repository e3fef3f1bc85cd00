"""Discover a SOURCE: a pipeline of components, each a list of tensors in files.

Every SOURCE form of the spec ends up as a :class:`Checkpoint`: one or more
:class:`Component` records, each with its tensors in byte order. Nothing here reads
tensor data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bigmodel_cli.checkpoint.names import index_files, variant_of, weight_files, weights_name
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats import FORMATS, Format, Layout, TensorInfo, format_of
from bigmodel_cli.formats.base import TensorSum
from bigmodel_cli.formats.index import Index, read_index, safe_member
from bigmodel_cli.formats.json import parse_json_object
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

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit}"

    @property
    def note(self) -> str:
        """Where the figures came from, for people."""
        if not self.remote:
            return f"read from the Hugging Face cache at {self.commit[:7]}"
        if not self.headers_fetched:
            return f"read from headers cached earlier from the Hub at {self.commit[:7]}"
        return (
            f"read {self.headers_fetched} headers, {format_size(self.bytes_fetched)}, "
            f"from the Hub at {self.commit[:7]}"
        )


def read_path(path: Path, name: str, variant: str | None = None) -> Checkpoint:
    """The checkpoint at a local ``path`` (a file or a folder); ``name`` names a
    single-model folder's component."""
    if path.is_file():
        return Checkpoint(
            path, path.parent, "file", (_file_component("model", path),), variant=variant
        )
    if not path.is_dir():
        raise BigmodelError("no such file or directory", path)
    if (path / "model_index.json").is_file():
        return _pipeline(path, variant)
    component = find_component(path, name, variant)
    if component is None:
        reason, hinted = _nothing_found(path, variant)
        raise BigmodelError(reason, path, argument=hinted)
    return Checkpoint(path, path, "model", (component,), variant=variant)


def _nothing_found(folder: Path, variant: str | None) -> tuple[str, str | None]:
    """The reason, and ``"variant"`` when it hints at another variant."""
    what = (
        f"no weights of variant {variant}"
        if variant
        else "no *.safetensors, *.bin or model_index.json"
    )
    hints = (
        sorted(
            p.name
            for p in folder.iterdir()
            if p.is_dir() and find_component(p, p.name, variant, quiet=True)
        )
        if folder.is_dir()
        else []
    )
    if hints:
        return f"{what} in this folder; did you mean {folder / hints[0]}?", None
    hint = _variant_hint([folder], variant)
    return f"{what} in this folder{hint}", "variant" if hint else None


def _variant_hint(folders: list[Path], variant: str | None) -> str:
    """``; did you mean variant fp16?`` when only other variants' weights are there (the
    error then names ``variant`` as its argument: the CLI writes ``--variant fp16``)."""
    found: set[str] = set()
    for folder in folders:
        for ext in (".safetensors", ".bin"):
            names = (variant_of(p.name, ext) for p in folder.glob(f"*{ext}") if p.is_file())
            found.update(v for v in names if v is not None and v != variant)
    return f"; did you mean variant {sorted(found)[0]}?" if found else ""


def _pipeline(root: Path, variant: str | None) -> Checkpoint:
    index_path = root / "model_index.json"
    try:
        raw = index_path.read_bytes()
    except OSError as exc:
        raise BigmodelError(f"cannot read ({exc.strerror})", index_path) from None
    spec = parse_json_object(raw, index_path, "model_index.json")
    components, skipped = [], []
    for name, value in spec.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library = (value[0], value[1]) if all(isinstance(v, str) for v in value) else None
        folder = safe_member(root, name, index_path)
        component = find_component(folder, name, variant) if folder.is_dir() else None
        if component is None:
            skipped.append(name)
        else:
            components.append(_with_library(component, library))
    if not components:
        folders = [p for p in root.iterdir() if p.is_dir()]
        hint = _variant_hint(folders, variant)
        raise BigmodelError(
            f"pipeline has no component with weights ({_variant_note(variant)}){hint}",
            root,
            argument="variant" if hint else None,
        )
    return Checkpoint(root, root, "pipeline", tuple(components), tuple(skipped), variant)


def _variant_note(variant: str | None) -> str:
    return f"variant {variant}" if variant else "no variant"


def _with_library(c: Component, library: tuple[str, str] | None) -> Component:
    return Component(
        c.name, c.folder, c.layout, c.weights_name, c.files, c.tensors, c.metadata, c.index, library
    )


def find_component(
    folder: Path, name: str, variant: str | None, quiet: bool = False
) -> Component | None:
    """The component stored in ``folder``, or None when it holds no weights: an index of
    the first format that has one, else the one weights file of the first format."""
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
        for fmt in FORMATS:
            indexes = index_files(names, variant, fmt.suffixes[0])
            if len(indexes) > 1:
                raise BigmodelError(f"several index files: {', '.join(indexes)}", folder)
            if indexes:
                return _sharded(folder, name, folder / indexes[0], fmt)
        for fmt in FORMATS:
            files = weight_files(names, variant, fmt.suffixes)
            if len(files) > 1:
                raise BigmodelError(
                    f"several weight files and no index: {', '.join(files)}", folder
                )
            if files:
                return _file_component(name, folder / files[0])
    except BigmodelError:
        if quiet:
            return None
        raise
    except OSError as exc:
        if quiet:
            return None
        raise BigmodelError(f"cannot list folder ({exc.strerror})", folder) from None
    return None


def _file_component(name: str, path: Path) -> Component:
    fmt = format_of(path)
    if fmt is None:
        raise BigmodelError("not a weights file (.safetensors, .bin, .pt, .pth)", path)
    found = fmt.read(path)
    layout = fmt.layouts[0]
    return Component(
        name, path.parent, layout, weights_name(path.name), (path,), found.tensors, found.metadata
    )


def _sharded(folder: Path, name: str, index_path: Path, fmt: Format) -> Component:
    index = read_index(index_path)
    tensors: list[TensorInfo] = []
    metadata: dict[str, str] | None = None
    owner: dict[str, str] = {}
    files = sorted((safe_member(folder, f, index_path) for f in index.files), key=lambda p: p.name)
    for path in files:
        if not path.is_file():
            raise BigmodelError(f"index names {path.name!r}, which does not exist", index_path)
        found = fmt.read(path)
        metadata = metadata if metadata is not None else found.metadata
        for t in found.tensors:
            if t.name in owner:
                raise BigmodelError(
                    f"tensor is in both {owner[t.name]} and {path.name}", index_path, t.name
                )
            owner[t.name] = path.name
            mapped = index.weight_map.get(t.name)
            if mapped != path.name:
                where = f"maps it to {mapped}" if mapped else "does not list it in weight_map"
                raise BigmodelError(
                    f"tensor is in {path.name} but the index {where}", index_path, t.name
                )
        tensors.extend(found.tensors)
    missing = sorted(set(index.weight_map) - set(owner))
    if missing:
        raise BigmodelError(
            f"index names {len(missing)} tensor(s) not found in {index.weight_map[missing[0]]}",
            index_path,
            missing[0],
        )
    total = sum(t.nbytes for t in tensors)
    if index.total_size is not None and index.total_size != total:
        raise BigmodelError(
            f"total_size is {index.total_size} but the tensors hold {total} bytes", index_path
        )
    return Component(
        name,
        folder,
        fmt.layouts[1],
        weights_name(files[0].name),
        tuple(files),
        tuple(tensors),
        metadata,
        index,
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
