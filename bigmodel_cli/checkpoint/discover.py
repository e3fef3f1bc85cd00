"""Discover a SOURCE: a pipeline of components, each a list of tensors in files.

Every SOURCE form of the spec ends up as a :class:`Checkpoint`: one or more
:class:`Component` records, each with its tensors in byte order. Nothing here reads
tensor data.
"""

from __future__ import annotations

import os
from pathlib import Path

from bigmodel_cli.checkpoint.checkpoint import Checkpoint, Component
from bigmodel_cli.checkpoint.model_index import (
    MODEL_INDEX,
    library_of,
    pipeline_entries,
    read_model_index,
)
from bigmodel_cli.checkpoint.names import index_files, variant_of, weight_files, weights_name
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats import FORMATS, Format, TensorInfo, format_of
from bigmodel_cli.formats.index import read_index, safe_member


def read_path(path: Path, name: str, variant: str | None = None) -> Checkpoint:
    """The checkpoint at a local ``path`` (a file or a folder); ``name`` names a
    single-model folder's component."""
    if path.is_file():
        return Checkpoint(
            path, path.parent, "file", (_file_component("model", path),), variant=variant
        )
    if not path.is_dir():
        there = os.path.exists(path)  # a device, a FIFO, a socket
        reason = "not a regular file or a folder" if there else "no such file or directory"
        raise BigmodelError(reason, path)
    if os.path.lexists(path / MODEL_INDEX):  # of any kind: the reader refuses what is not a file
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
    entries = pipeline_entries(read_model_index(root))
    components, skipped = [], []
    for name, entry in entries.items():
        folder = safe_member(root, name, root / MODEL_INDEX, "component")
        component = find_component(folder, name, variant) if folder.is_dir() else None
        if component is None:
            skipped.append(name)
        else:
            components.append(_with_library(component, library_of(entry)))
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
        names = [p.name for p in folder.iterdir() if not p.is_dir()]  # FIFOs too: refused
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
            if files:  # a link leading out of the folder is refused, as an index's shards
                return _file_component(name, safe_member(folder, files[0], folder, "weights file"))
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
    if not files:
        raise BigmodelError("index maps no tensor to a file (its weight_map is empty)", index_path)
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
