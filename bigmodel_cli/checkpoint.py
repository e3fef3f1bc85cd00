"""Discover a SOURCE: a pipeline of components, each a list of tensors in files.

Every SOURCE form of the spec ends up as a :class:`Checkpoint`: one or more
:class:`Component` records, each with its tensors in byte order. Nothing here reads
tensor data.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.index import Index, read_index, safe_member
from bigmodel_cli.formats.pickle import PICKLE_SUFFIXES, read_pickle_tensors
from bigmodel_cli.formats.safetensors import TensorInfo, parse_json_object, read_header

Layout = Literal["single", "sharded", "pickle"]
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Component:
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

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class Checkpoint:
    """What a SOURCE holds. ``root`` is the folder whose non-weight files belong to it."""

    source: Path
    root: Path
    kind: Literal["file", "model", "pipeline"]
    components: tuple[Component, ...]
    skipped: tuple[str, ...] = ()
    variant: str | None = None


def load_checkpoint(
    source: str | os.PathLike[str] | None, variant: str | None = None
) -> Checkpoint:
    """Resolve ``source`` (a path, a Hugging Face repo id, or None for the current folder)."""
    path = Path(source) if source is not None else Path.cwd()
    name = path.resolve().name or "model"
    if not path.exists() and source is not None and _REPO_ID.match(str(source)):
        path = _from_hf_cache(str(source))
        name = str(source).rsplit("/", 1)[1]
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
        raise BigmodelError(_nothing_found(path, variant), path)
    return Checkpoint(path, path, "model", (component,), variant=variant)


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        raise BigmodelError(
            "not a local path, and not in the Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); "
            f"fetch it first with `hf download {repo_id}`",
            repo_id,
        ) from None


def _nothing_found(folder: Path, variant: str | None) -> str:
    what = (
        f"no {variant} variant weights"
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
    hint = f"; did you mean {folder / hints[0]}?" if hints else _variant_hint([folder], variant)
    return f"{what} in this folder{hint}"


def _variant_hint(folders: list[Path], variant: str | None) -> str:
    """``; did you mean --variant fp16?`` when only other variants' weights are there."""
    found: set[str] = set()
    for folder in folders:
        for ext in (".safetensors", ".bin"):
            names = (variant_of(p.name, ext) for p in folder.glob(f"*{ext}") if p.is_file())
            found.update(v for v in names if v is not None and v != variant)
    return f"; did you mean --variant {sorted(found)[0]}?" if found else ""


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
            f"pipeline has no component with weights ({_variant_note(variant)}){hint}", root
        )
    return Checkpoint(root, root, "pipeline", tuple(components), tuple(skipped), variant)


def _variant_note(variant: str | None) -> str:
    return f"variant {variant}" if variant else "no variant"


def _with_library(c: Component, library: tuple[str, str] | None) -> Component:
    return Component(
        c.name, c.folder, c.layout, c.weights_name, c.files, c.tensors, c.metadata, c.index, library
    )


HF_STEMS = ("model", "diffusion_pytorch_model", "pytorch_model")


def variant_of(name: str, suffix: str) -> str | None:
    """``diffusion_pytorch_model.fp16.safetensors`` -> ``fp16``. Only Hugging Face weight
    names carry variants: ``sd_xl_base_1.0.safetensors`` has none (not ``0``)."""
    stem = _SHARD_SUFFIX.sub("", name[: -len(suffix)])
    base, dot, variant = stem.rpartition(".")
    return variant if dot and base in HF_STEMS and variant else None


def _index_candidates(folder: Path, variant: str | None, ext: str) -> list[Path]:
    """Index files of ``variant`` (None: no variant) for weights ending in ``ext``:
    ``X.safetensors.index.json``; with a variant, diffusers' ``X.safetensors.index.fp16.json``,
    ``X.fp16.safetensors.index.json`` and the legacy ``X.safetensors.fp16.index.json``."""
    found = []
    for p in folder.glob(f"*{ext}*.json"):
        name = p.name
        if name.endswith(f"{ext}.index.json"):
            v = variant_of(name.removesuffix(".index.json"), ext)
        elif variant and name.endswith(
            (f"{ext}.index.{variant}.json", f"{ext}.{variant}.index.json")
        ):
            v = variant
        else:
            continue
        if v == variant:
            found.append(p)
    return sorted(found)


def find_component(
    folder: Path, name: str, variant: str | None, quiet: bool = False
) -> Component | None:
    """The component stored in ``folder``, or None when it holds no weights."""
    try:
        for ext in (".safetensors", ".bin"):
            indexes = _index_candidates(folder, variant, ext)
            if len(indexes) > 1:
                raise BigmodelError(
                    f"several index files: {', '.join(p.name for p in indexes)}", folder
                )
            if indexes:
                return _sharded(folder, name, indexes[0], ext)
        for suffixes in ((".safetensors",), PICKLE_SUFFIXES):
            files = sorted(
                p
                for s in suffixes
                for p in folder.glob(f"*{s}")
                if p.is_file()
                and variant_of(p.name, s) == variant
                and not _SHARD_SUFFIX.search(p.stem)
            )
            if len(files) > 1:
                preferred = [
                    p
                    for p in files
                    if p.stem.split(".")[0] in ("model", "diffusion_pytorch_model", "pytorch_model")
                ]
                if len(preferred) != 1:
                    raise BigmodelError(
                        f"several weight files and no index: {', '.join(p.name for p in files)}",
                        folder,
                    )
                files = preferred
            if files:
                return _file_component(name, files[0])
    except BigmodelError:
        if quiet:
            return None
        raise
    return None


def _weights_name(file_name: str) -> str:
    """``diffusion_pytorch_model.fp16-00001-of-00002.safetensors`` -> the weights name."""
    return _SHARD_SUFFIX.sub("", file_name.split(".")[0])


def _file_component(name: str, path: Path) -> Component:
    if path.suffix in PICKLE_SUFFIXES:
        tensors = read_pickle_tensors(path)
        return Component(
            name, path.parent, "pickle", _weights_name(path.name), (path,), tuple(tensors), None
        )
    header = read_header(path)
    return Component(
        name,
        path.parent,
        "single",
        _weights_name(path.name),
        (path,),
        header.tensors,
        header.metadata,
    )


def _sharded(folder: Path, name: str, index_path: Path, ext: str) -> Component:
    index = read_index(index_path)
    tensors: list[TensorInfo] = []
    metadata: dict[str, str] | None = None
    owner: dict[str, str] = {}
    files = sorted((safe_member(folder, f, index_path) for f in index.files), key=lambda p: p.name)
    for path in files:
        if not path.is_file():
            raise BigmodelError(f"index names {path.name!r}, which does not exist", index_path)
        if ext == ".bin":
            found = read_pickle_tensors(path)
        else:
            header = read_header(path)
            found = list(header.tensors)
            metadata = metadata if metadata is not None else header.metadata
        for t in found:
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
        tensors.extend(found)
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
    layout: Layout = "pickle" if ext == ".bin" else "sharded"
    return Component(
        name,
        folder,
        layout,
        _weights_name(files[0].name),
        tuple(files),
        tuple(tensors),
        metadata,
        index,
    )


_NUMERIC = re.compile(r"^\d+$")


def block_of(name: str, containers: frozenset[str]) -> str:
    """The block a tensor belongs to: the dotted prefix through its first numeric part
    (``down_blocks.1``, ``model.layers.12``); otherwise the shortest prefix that is not a
    wrapper of numbered blocks (``model.embed_tokens``, ``conv_in``, ``lm_head``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _NUMERIC.match(part):
            return ".".join(parts[: i + 1])
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix not in containers:
            return prefix
    return name


def wrappers(names: list[str]) -> frozenset[str]:
    """Prefixes that hold numbered blocks below them (``model`` for ``model.layers.0.x``)."""
    found: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if _NUMERIC.match(part):
                found.update(".".join(parts[:j]) for j in range(1, i))
                break
    return frozenset(found)


def group_blocks(names: list[str]) -> dict[str, str]:
    """Tensor name -> block name, for every name."""
    containers = wrappers(names)
    return {n: block_of(n, containers) for n in names}


def read_json_file(path: Path) -> dict[str, object] | None:
    """A small JSON file (config.json) or None when absent or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
