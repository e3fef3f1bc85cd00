"""Every Hugging Face weight, shard and index file name, in one place.

``from_pretrained`` of diffusers and transformers looks for fixed file stems:

- ``model``: transformers' safetensors weights (``model.safetensors``,
  ``model-00001-of-00002.safetensors``, ``model.safetensors.index.json``);
- ``pytorch_model``: transformers' legacy pickle weights (``pytorch_model.bin``);
- ``diffusion_pytorch_model``: diffusers' weights, safetensors or pickle.

A variant sits before the extension (``diffusion_pytorch_model.fp16.safetensors``); a
shard number after the stem (``model.fp16-00001-of-00002.safetensors``). Everything here
works on names alone, so a listing from the Hub can be judged like a local folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

WEIGHT_STEMS = ("model", "diffusion_pytorch_model", "pytorch_model")
SAFETENSORS_STEMS = ("model", "diffusion_pytorch_model")  # what shard / merge write
SAFETENSORS_SUFFIX = ".safetensors"
SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")
INDEX_SUFFIX = ".index.json"


def variant_of(name: str, suffix: str) -> str | None:
    """``diffusion_pytorch_model.fp16.safetensors`` -> ``fp16``. Only Hugging Face weight
    names carry variants: ``sd_xl_base_1.0.safetensors`` has none (not ``0``)."""
    stem = SHARD_SUFFIX.sub("", name[: -len(suffix)])
    base, dot, variant = stem.rpartition(".")
    return variant if dot and base in WEIGHT_STEMS and variant else None


def is_shard(file_name: str) -> bool:
    """``model-00001-of-00002.safetensors`` is one shard of an indexed set."""
    return bool(SHARD_SUFFIX.search(file_name.rsplit(".", 1)[0]))


def weights_name(file_name: str) -> str:
    """``diffusion_pytorch_model.fp16-00001-of-00002.safetensors`` -> the weights name."""
    return SHARD_SUFFIX.sub("", file_name.split(".")[0])


def is_hf_weights(file_name: str) -> bool:
    """A file named as ``from_pretrained`` names weights (``model.safetensors``)."""
    return file_name.split(".")[0] in WEIGHT_STEMS


def index_variant(name: str, ext: str, variant: str | None) -> bool:
    """Is ``name`` an index of ``variant`` (None: no variant) for weights ending in ``ext``?
    ``X.safetensors.index.json``; with a variant, diffusers' ``X.safetensors.index.fp16.json``,
    ``X.fp16.safetensors.index.json`` and the legacy ``X.safetensors.fp16.index.json``."""
    if name.endswith(f"{ext}{INDEX_SUFFIX}"):
        return variant_of(name.removesuffix(INDEX_SUFFIX), ext) == variant
    return bool(variant) and name.endswith(
        (f"{ext}.index.{variant}.json", f"{ext}.{variant}{INDEX_SUFFIX}")
    )


def index_files(names: Iterable[str], variant: str | None, ext: str) -> list[str]:
    """The index file names among ``names`` for ``variant`` and weights ending in ``ext``."""
    return sorted(n for n in names if index_variant(n, ext, variant))


def weight_files(names: Iterable[str], variant: str | None, suffixes: tuple[str, ...]) -> list[str]:
    """Unsharded weight files of ``variant`` ending in one of ``suffixes``; where there are
    several, only the one with a Hugging Face name counts (none or several: all return)."""
    found = sorted(
        n
        for n in names
        for s in suffixes
        if n.endswith(s) and variant_of(n, s) == variant and not is_shard(n)
    )
    preferred = [n for n in found if is_hf_weights(n)]
    return preferred if len(found) > 1 and len(preferred) == 1 else found


def shard_names(weights: str, variant: str | None, count: int) -> tuple[list[str], str | None]:
    """File names for ``count`` safetensors shards, and the index name (None for one file).

    Diffusers' and transformers' ``_add_variant`` rule: ``model.fp16.safetensors``,
    ``model.fp16-00001-of-00002.safetensors`` and ``model.safetensors.index.fp16.json``.
    """
    stem = f"{weights}.{variant}" if variant else weights
    ext = SAFETENSORS_SUFFIX
    if count == 1:
        return [f"{stem}{ext}"], None
    names = [f"{stem}-{i:05d}-of-{count:05d}{ext}" for i in range(1, count + 1)]
    index = f"{weights}{ext}.index.{variant}.json" if variant else f"{weights}{ext}{INDEX_SUFFIX}"
    return names, index


def hf_cache_folder(repo_id: str) -> Path:
    """Where the Hugging Face cache keeps model repo ``repo_id`` (``models--org--name``
    under ``HF_HUB_CACHE``, read now)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
