"""``bigmodel merge``, and ``shard`` followed by ``merge`` giving back the source."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigmodel_cli.formats.safetensors import read_header
from bigmodel_cli.progress import NullProgress
from bigmodel_cli.sharding import merge, shard
from bigmodel_cli.sizes import DTYPES
from tests.helpers.checkpoints import (
    assert_same_tensors,
    shard_report,
    tensors_of,
    tiny_llama,
    tiny_unet,
    tiny_vae,
    write_raw,
)
from tests.helpers.cli import FIXTURES, run_cli
from tests.helpers.trees import leftovers, tree_hash

Tensor = tuple[str, str, tuple[int, ...], bytes]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(1)
    tiny_unet().save_pretrained(root / "unet", max_shard_size="300KB")
    tiny_vae().half().save_pretrained(root / "vae", variant="fp16", max_shard_size="200KB")
    tiny_llama().save_pretrained(root / "llama", max_shard_size="200KB")
    return root


@st.composite
def checkpoints(draw: st.DrawFn) -> tuple[list[Tensor], dict[str, str]]:
    """Any tensors of any safetensors dtype: 0-d, empty, sub-byte, odd names; metadata."""
    name = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
    names = draw(st.lists(name.filter(lambda n: n != "__metadata__"), max_size=8, unique=True))
    tensors = []
    for n in names:
        code = draw(st.sampled_from(sorted(DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        if math.prod(shape) * DTYPES[code].bits % 8:
            shape += (8,)
        size = DTYPES[code].nbytes(math.prod(shape))
        tensors.append((n, code, shape, draw(st.binary(min_size=size, max_size=size))))
    metadata = draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3))
    metadata.setdefault("format", "pt")
    return tensors, metadata


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(checkpoints(), st.integers(1, 300))
def test_shard_then_merge_gives_back_the_source_byte_for_byte(
    checkpoint: tuple[list[Tensor], dict[str, str]], limit: int
) -> None:
    tensors, metadata = checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m.safetensors"
        write_raw(src, tensors, **metadata)
        progress = NullProgress()
        shard(
            str(src),
            None,
            max_shard_size=limit,
            dtype=None,
            variant=None,
            force=False,
            progress=progress,
        )
        sharded = Path(tmp) / "m-sharded"
        for _, size, count in shard_report(sharded):
            assert size <= limit or count == 1
        header = read_header(src)
        assert sum(r[2] for r in shard_report(sharded)) == len(header.tensors)
        merge(str(sharded), None, dtype=None, variant=None, force=False, progress=progress)
        merged = Path(tmp) / "m-sharded-merged"
        assert [p.name for p in merged.iterdir()] == ["model.safetensors"]
        assert (merged / "model.safetensors").read_bytes() == src.read_bytes()


def test_merge_llama_into_one_file_that_transformers_loads(models: Path, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    out = tmp_path / "llama-merged"
    result = run_cli("merge", models / "llama", "-o", out)
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    source = tensors_of(models / "llama")
    assert_same_tensors(tensors_of(out / "model.safetensors"), source)
    assert_same_tensors(dict(LlamaForCausalLM.from_pretrained(out).state_dict()), source)


def test_merge_pipeline_gives_one_file_per_component(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    src = FIXTURES / "tiny-pipeline"
    out = tmp_path / "merged"
    result = run_cli("merge", src, "-o", out, "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["components"]["unet"]["files"] == ["unet/diffusion_pytorch_model.safetensors"]
    assert not list(out.rglob("*.index.json"))
    assert sorted(p.name for p in (out / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert (out / "tokenizer").is_dir() and (out / "model_index.json").is_file()
    model = UNet2DConditionModel.from_pretrained(out / "unet")
    assert_same_tensors(dict(model.state_dict()), tensors_of(src / "unet"))


def test_merge_of_huggingface_hub_shards_keeps_every_dtype(tmp_path: Path) -> None:
    from huggingface_hub import save_torch_state_dict

    g = torch.Generator().manual_seed(3)
    state = {
        "a.f32": torch.randn(64, 64, generator=g),
        "b.bf16": torch.randn(100, generator=g).to(torch.bfloat16),
        "c.fp8": torch.randn(300, generator=g).to(torch.float8_e4m3fn),
        "d.bool": torch.rand(33, generator=g) > 0.5,
        "e.scalar": torch.tensor(3.5),
        "f.empty": torch.zeros(0, 4),
        "g.i64": torch.arange(10),
    }
    src = tmp_path / "hf"
    src.mkdir()
    save_torch_state_dict(state, src, max_shard_size=5000)
    assert len(list(src.glob("*.safetensors"))) > 1
    out = tmp_path / "merged"
    assert run_cli("merge", src, "-o", out).code == 0
    assert_same_tensors(tensors_of(out / "model.safetensors"), state)


def test_merge_dtype_bfloat16_equals_tensor_to(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    assert run_cli("merge", models / "llama", "-o", out, "--dtype", "bf16").code == 0
    want = {k: v.to(torch.bfloat16) for k, v in tensors_of(models / "llama").items()}
    assert_same_tensors(tensors_of(out / "model.safetensors"), want)


def test_merge_variant_keeps_its_name(models: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    out = tmp_path / "vae"
    assert run_cli("merge", models / "vae", "-o", out, "--variant", "fp16").code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.fp16.safetensors",
    ]
    model = AutoencoderKL.from_pretrained(out, variant="fp16", torch_dtype=torch.float16)
    assert_same_tensors(dict(model.state_dict()), tensors_of(models / "vae"))


@pytest.mark.parametrize(
    "relative",
    ["single.safetensors", "tiny-pipeline/vae/diffusion_pytorch_model.safetensors"],
)
def test_real_files_survive_shard_then_merge_byte_for_byte(relative: str, tmp_path: Path) -> None:
    src = tmp_path / "w.safetensors"
    shutil.copy(FIXTURES / relative, src)
    assert run_cli("shard", src, "--max-shard-size", "2KB").code == 0
    assert len(shard_report(tmp_path / "w-sharded")) > 1
    assert run_cli("merge", tmp_path / "w-sharded").code == 0
    assert (tmp_path / "w-sharded-merged" / "model.safetensors").read_bytes() == src.read_bytes()


def test_merge_default_output_and_force(models: Path, tmp_path: Path) -> None:
    src = tmp_path / "llama"
    shutil.copytree(models / "llama", src)
    before = tree_hash(src)
    assert run_cli("merge", f"{src}/").code == 0
    out = tmp_path / "llama-merged"
    assert (out / "model.safetensors").is_file()
    result = run_cli("merge", src)
    assert result.code == 2 and "already exists" in result.stderr
    assert run_cli("merge", src, "--force").code == 0
    assert tree_hash(src) == before
    assert leftovers(tmp_path) == []
