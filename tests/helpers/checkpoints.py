"""Checkpoints for tests: written byte by byte (any dtype, sparse), saved by the real
libraries from tiny configs (``fixtures/make_fixtures.py``), or built on the meta device;
the Hugging Face cache layout; and tools to compare the tensors of safetensors files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigmodel_cli.formats.safetensors import HeaderEntry, build_header, read_header
from tests.helpers import FIXTURES

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------- written by hand


def write_raw(
    path: Path, tensors: Sequence[tuple[str, str, tuple[int, ...], bytes]], **meta: str
) -> None:
    """A safetensors file written byte by byte (any dtype, even those torch lacks)."""
    entries = [HeaderEntry(name, dtype, shape) for name, dtype, shape, _ in tensors]
    with open(path, "wb") as f:
        f.write(build_header(entries, dict(meta) if meta else None))
        for *_, data in tensors:
            f.write(data)


def sparse_checkpoint(path: Path, gigabytes: float = 1.5) -> Path:
    """A valid safetensors file with one huge zero tensor, sparse on disk: slow enough to
    catch a run in the middle, cheap to make."""
    count = int(gigabytes * 1e9) // 4
    header = build_header(
        [HeaderEntry("small.weight", "F32", (2,)), HeaderEntry("huge.weight", "F32", (count,))],
        {"format": "pt"},
    )
    with open(path, "wb") as f:
        f.write(header + b"\1" * 8)
        f.truncate(len(header) + 8 + count * 4)
    return path


# ---------------------------------------------------------------- the real libraries


def tiny_unet() -> Any:
    from make_fixtures import tiny_unet as build

    return build()


def tiny_vae() -> Any:
    from make_fixtures import tiny_vae as build

    return build()


def tiny_text_encoder() -> Any:
    from make_fixtures import tiny_text_encoder as build

    return build()


def tiny_llama() -> Any:
    from make_fixtures import tiny_llama as build

    return build()


def save_pipeline(path: Path, max_shard_size: str | None) -> Path:
    """A tiny Stable Diffusion pipeline saved by diffusers' own ``save_pretrained``."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=CLIPTokenizer.from_pretrained(FIXTURES / "tiny-pipeline" / "tokenizer"),
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, max_shard_size=max_shard_size)
    return path


def llama_config(tie: bool, layers: int = 6) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )


def meta_unet() -> Any:
    """The tiny-pipeline UNet2DConditionModel, built on the meta device from its config."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = json.loads((FIXTURES / "tiny-pipeline" / "unet" / "config.json").read_text())
    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def meta_llama(tie: bool = False, layers: int = 6) -> Any:
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    with init_empty_weights():
        model = LlamaForCausalLM(llama_config(tie, layers))
    model.tie_weights()
    return model


def saved_sizes(model: Any, dtype: Any = None) -> dict[str, int]:
    """Bytes of each tensor ``save_pretrained`` would write (tied copies written once)."""
    sizes = {}
    for name, tensor in model.state_dict().items():
        width = tensor.element_size()
        if dtype is not None and tensor.is_floating_point():
            width = dtype.itemsize
        sizes[name] = tensor.numel() * width
    tied = getattr(model, "_tied_weights_keys", None) or {}
    if getattr(model.config, "tie_word_embeddings", False):
        for name in list(tied):
            sizes.pop(name, None)
    return sizes


def make_hf_cache(home: Path, repo_id: str, source: Path) -> Path:
    """A Hugging Face cache under ``home`` holding ``source`` as ``repo_id``, laid out as
    huggingface_hub lays it out: content in ``blobs/<sha256>``, the snapshot's files
    relative symlinks into it, ``refs/main`` naming the snapshot. Returns the snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for f in sorted(p for p in source.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / f.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


# ---------------------------------------------------------------- comparing tensors


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file, or of all such files in a folder."""
    from safetensors.torch import load_file

    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    result: dict[str, torch.Tensor] = {}
    for f in files:
        result.update(load_file(f))
    return result


def bits(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (NaN-safe, any dtype, 0-d included)."""
    import torch

    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        g = got[name]
        assert (g.dtype, tuple(g.shape)) == (t.dtype, tuple(t.shape)), name
        assert bits(g) == bits(t), name


def shard_report(folder: Path) -> list[tuple[str, int, int]]:
    """(file name, tensor bytes, tensor count) of each .safetensors file in ``folder``."""
    rows = []
    for f in sorted(folder.glob("*.safetensors")):
        header = read_header(f)
        rows.append((f.name, sum(t.nbytes for t in header.tensors), len(header.tensors)))
    return rows
