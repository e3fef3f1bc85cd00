"""``bigmodel shard``: layout planning, real-library loading, atomic output, faults."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.checkpoint.names import shard_names
from bigmodel_cli.formats.safetensors import read_header
from bigmodel_cli.progress import NullProgress
from bigmodel_cli.sharding import plan as write_plan
from bigmodel_cli.sharding import shard, write
from bigmodel_cli.sharding.output import AtomicFolder
from bigmodel_cli.sizes import DTYPES
from tests.helpers.checkpoints import (
    assert_same_tensors,
    shard_report,
    sparse_checkpoint,
    tensors_of,
    tiny_llama,
    tiny_unet,
    tiny_vae,
    write_raw,
)
from tests.helpers.cli import BIGMODEL, FIXTURES, run_cli, run_subprocess
from tests.helpers.trees import leftovers, read_json, tree_hash, wait_for_temp_data

UNET_WEIGHTS = "diffusion_pytorch_model{suffix}.safetensors"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints saved by the libraries themselves, from tiny configs."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tiny_unet().save_pretrained(root / "unet")
    tiny_vae().half().save_pretrained(root / "vae", variant="fp16")
    tiny_llama().save_pretrained(root / "llama", max_shard_size="200KB")
    return root


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- pure planning -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=40), st.integers(1, 1200))
def test_split_sizes_fills_greedily_and_keeps_order(sizes: list[int], limit: int) -> None:
    runs = write_plan.split_sizes(sizes, limit)
    assert [i for run in runs for i in run] == list(range(len(sizes)))
    for run in runs:
        total = sum(sizes[i] for i in run)
        assert total <= limit or len(run) == 1
    for before, after in zip(runs, runs[1:], strict=False):
        filled = sum(sizes[i] for i in before)
        first = sizes[after[0]]
        assert filled + first > limit or first > limit or filled > limit


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=1, max_size=40), st.integers(100, 400))
def test_split_sizes_matches_huggingface_hub_when_no_tensor_is_too_big(
    sizes: list[int], limit: int
) -> None:
    from huggingface_hub import split_state_dict_into_shards_factory

    state = {f"t{i:03d}": size for i, size in enumerate(sizes)}
    hf = split_state_dict_into_shards_factory(
        state, get_storage_size=lambda n: n, filename_pattern="m{suffix}", max_shard_size=limit
    )
    ours = [[f"t{i:03d}" for i in run] for run in write_plan.split_sizes(sizes, limit)]
    assert ours == list(hf.filename_to_tensors.values())


def test_shard_names_follow_diffusers_and_transformers() -> None:
    assert shard_names("model", None, 1) == (["model.safetensors"], None)
    assert shard_names("diffusion_pytorch_model", None, 3) == (
        [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)],
        "diffusion_pytorch_model.safetensors.index.json",
    )
    assert shard_names("diffusion_pytorch_model", "fp16", 2) == (
        [f"diffusion_pytorch_model.fp16-0000{i}-of-00002.safetensors" for i in (1, 2)],
        "diffusion_pytorch_model.safetensors.index.fp16.json",
    )
    assert shard_names("model", "fp16", 1) == (["model.fp16.safetensors"], None)


def test_plan_is_data_and_writes_nothing(tmp_path: Path) -> None:
    ckpt = load_checkpoint(FIXTURES / "tiny-pipeline")
    plan = write_plan.plan_write(ckpt, tmp_path / "out", "shard", 500_000, None)
    assert not (tmp_path / "out").exists()
    unet = next(c for c in plan.components if c.name == "unet")
    assert unet.folder == "unet" and len(unet.files) > 1
    assert all(f.nbytes <= 500_000 or len(f.tensors) == 1 for f in unet.files)
    targets = {c.target for c in plan.copies}
    assert {"model_index.json", "unet/config.json", "tokenizer/vocab.json"} <= targets
    assert not any(t.endswith((".safetensors", ".safetensors.index.json")) for t in targets)


# --- output that the real libraries load --------------------------------------------


def test_unet_shards_load_in_diffusers_and_huggingface_hub(models: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel
    from huggingface_hub import load_torch_model

    out = tmp_path / "unet-sharded"
    result = run_cli("shard", models / "unet", "-o", out, "--max-shard-size", "300KB")
    assert result.code == 0, result.stderr
    rows = shard_report(out)
    assert len(rows) > 2
    assert [r[0] for r in rows] == [
        f"diffusion_pytorch_model-{i:05d}-of-{len(rows):05d}.safetensors"
        for i in range(1, len(rows) + 1)
    ]
    assert all(size <= 300_000 or count == 1 for _, size, count in rows)
    index = read_json(out / "diffusion_pytorch_model.safetensors.index.json")
    source = tensors_of(models / "unet" / "diffusion_pytorch_model.safetensors")
    assert index["metadata"] == {"total_size": sum(t.nbytes for t in source.values())}
    assert (out / "config.json").read_bytes() == (models / "unet" / "config.json").read_bytes()

    model = UNet2DConditionModel.from_pretrained(out)
    assert_same_tensors(dict(model.state_dict()), source)
    fresh = tiny_unet()
    load_torch_model(fresh, out, filename_pattern=UNET_WEIGHTS)
    assert_same_tensors(dict(fresh.state_dict()), source)


def test_llama_shards_load_in_transformers_and_huggingface_hub(
    models: Path, tmp_path: Path
) -> None:
    from huggingface_hub import load_torch_model
    from transformers import LlamaForCausalLM

    out = tmp_path / "llama-sharded"
    assert run_cli("shard", models / "llama", "-o", out, "--max-shard-size", "300KB").code == 0
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in names and "generation_config.json" in names
    assert all(size <= 300_000 or count == 1 for _, size, count in shard_report(out))
    source = tensors_of(models / "llama")
    model = LlamaForCausalLM.from_pretrained(out)
    assert_same_tensors(dict(model.state_dict()), source)
    fresh = tiny_llama()
    load_torch_model(fresh, out)
    assert_same_tensors(dict(fresh.state_dict()), source)
    # The index keeps transformers' extra metadata (total_parameters) next to total_size.
    index = read_json(out / "model.safetensors.index.json")
    assert (
        index["metadata"]
        == read_json(models / "llama" / "model.safetensors.index.json")["metadata"]
    )


def test_pipeline_is_sharded_component_by_component(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    src = FIXTURES / "tiny-pipeline"
    before = tree_hash(src)
    out = tmp_path / "pipe"
    assert run_cli("shard", src, "-o", out, "--max-shard-size", "500KB").code == 0
    assert tree_hash(src) == before
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if f.is_file() and not f.name.endswith((".safetensors", ".index.json")):
            assert (out / rel).read_bytes() == f.read_bytes(), rel
    assert (out / "vae" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert (out / "text_encoder" / "model.safetensors").is_file()  # fits in one shard
    for name, cls in (
        ("unet", UNet2DConditionModel),
        ("vae", AutoencoderKL),
        ("text_encoder", CLIPTextModel),
    ):
        model = cls.from_pretrained(out / name)
        assert_same_tensors(dict(model.state_dict()), tensors_of(src / name))


def test_dtype_float16_equals_tensor_to(models: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    out = tmp_path / "unet16"
    args = ("shard", models / "unet", "-o", out, "--max-shard-size", "200KB", "--dtype", "float16")
    assert run_cli(*args).code == 0
    source = tensors_of(models / "unet")
    want = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in source.items()}
    assert_same_tensors(tensors_of(out), want)
    model = UNet2DConditionModel.from_pretrained(out, torch_dtype=torch.float16)
    assert_same_tensors(dict(model.state_dict()), want)


def test_variant_keeps_the_diffusers_names(models: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    out = tmp_path / "vae-sharded"
    args = ("shard", models / "vae", "-o", out, "--variant", "fp16", "--max-shard-size", "200KB")
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    count = len([n for n in names if n.endswith(".safetensors")])
    assert count > 1
    assert names == sorted(
        ["config.json", "diffusion_pytorch_model.safetensors.index.fp16.json"]
        + [
            f"diffusion_pytorch_model.fp16-{i:05d}-of-{count:05d}.safetensors"
            for i in range(1, count + 1)
        ]
    )
    model = AutoencoderKL.from_pretrained(out, variant="fp16", torch_dtype=torch.float16)
    assert_same_tensors(dict(model.state_dict()), tensors_of(models / "vae"))


def test_index_is_byte_identical_to_huggingface_hub(models: Path, tmp_path: Path) -> None:
    from huggingface_hub import save_torch_state_dict

    src = models / "unet" / "diffusion_pytorch_model.safetensors"
    ckpt = load_checkpoint(src)
    order = [t.name for t in write_plan.source_order(ckpt.components[0].tensors)]
    state = tensors_of(src)
    limit = 400_000  # larger than every tensor: the same greedy cut as huggingface_hub
    assert max(t.nbytes for t in ckpt.components[0].tensors) <= limit
    (tmp_path / "hf").mkdir()
    save_torch_state_dict(
        {k: state[k] for k in order},
        tmp_path / "hf",
        filename_pattern=UNET_WEIGHTS,
        max_shard_size=limit,
    )
    out = tmp_path / "ours"
    assert run_cli("shard", src, "-o", out, "--max-shard-size", str(limit)).code == 0
    name = "diffusion_pytorch_model.safetensors.index.json"
    # huggingface_hub omits the final newline that diffusers and transformers write.
    assert (out / name).read_text() == (tmp_path / "hf" / name).read_text() + "\n"


def test_legacy_bin_becomes_safetensors(models: Path, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    source = tensors_of(models / "llama")
    torch.save(source, legacy / "pytorch_model.bin")
    shutil.copy(models / "llama" / "config.json", legacy)
    out = tmp_path / "converted"
    assert run_cli("shard", legacy, "-o", out, "--max-shard-size", "300KB").code == 0
    assert not list(out.glob("*.bin"))
    assert (out / "model.safetensors.index.json").is_file()
    model = LlamaForCausalLM.from_pretrained(out)
    assert_same_tensors(dict(model.state_dict()), source)

    bin_file = FIXTURES / "legacy" / "pytorch_model.bin"
    out16 = tmp_path / "legacy16"
    assert run_cli("shard", bin_file, "-o", out16, "--dtype", "fp16").code == 0
    want = torch.load(bin_file, weights_only=True)
    assert_same_tensors(
        tensors_of(out16 / "model.safetensors"), {k: v.half() for k, v in want.items()}
    )


def test_sharded_legacy_bin_with_index_becomes_safetensors(models: Path, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    source = tensors_of(models / "llama")
    names = sorted(source)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    halves = {
        "pytorch_model-00001-of-00002.bin": names[::2],
        "pytorch_model-00002-of-00002.bin": names[1::2],
    }
    for file, keys in halves.items():
        torch.save({k: source[k] for k in keys}, legacy / file)
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    total = sum(t.nbytes for t in source.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (legacy / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    shutil.copy(models / "llama" / "config.json", legacy)
    out = tmp_path / "converted"
    assert run_cli("shard", legacy, "-o", out, "--max-shard-size", "1GB").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_tensors(dict(LlamaForCausalLM.from_pretrained(out).state_dict()), source)


def test_small_chunks_give_the_same_bytes(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunk loop (kernel copy, buffered copy, cast) with chunks far below tensor sizes."""
    src = FIXTURES / "single.safetensors"
    for dtype in ([], ["--dtype", "fp16"]):
        name = "cast" if dtype else "copy"
        assert run_cli("shard", src, "-o", tmp_path / f"{name}-big", *dtype).code == 0
        monkeypatch.setattr(write, "COPY_CHUNK", 24)
        monkeypatch.setattr(write, "BUFFER", 40)
        monkeypatch.setattr(write, "CONVERT_CHUNK", 36)
        assert run_cli("shard", src, "-o", tmp_path / f"{name}-small", *dtype).code == 0
        monkeypatch.setattr(os, "copy_file_range", _unsupported)
        monkeypatch.setattr(os, "sendfile", _unsupported)
        assert run_cli("shard", src, "-o", tmp_path / f"{name}-buffered", *dtype).code == 0
        monkeypatch.undo()
        want = tree_hash(tmp_path / f"{name}-big")
        assert tree_hash(tmp_path / f"{name}-small") == want
        assert tree_hash(tmp_path / f"{name}-buffered") == want
    source = tensors_of(src)
    cast = {k: v.half() if v.is_floating_point() else v for k, v in source.items()}
    assert_same_tensors(tensors_of(tmp_path / "cast-big"), cast)
    assert tensors_of(tmp_path / "cast-big")["head.bias"].dtype == torch.int64


def test_pieces_merge_adjacent_tensors_into_one_copy(tmp_path: Path) -> None:
    ckpt = load_checkpoint(FIXTURES / "single.safetensors")
    plan = write_plan.plan_component(ckpt.components[0], "", None, None, None)
    (only,) = plan.files
    assert write.pieces(only.tensors) == [
        write.ByteRange(only.tensors[0].file, only.tensors[0].start, only.tensors[-1].end)
    ]
    cast = write_plan.plan_component(ckpt.components[0], "", None, DTYPES["F16"], None)
    kinds = [type(p).__name__ for p in write.pieces(cast.files[0].tensors)]
    # I64 head.bias copied; F32 embed and BF16 blocks.0 cast; F16 blocks.1 + BOOL mask copied.
    assert kinds == ["ByteRange", "TensorSlot", "TensorSlot", "ByteRange"]


def test_shard_data_keeps_its_page_offset(models: Path, tmp_path: Path) -> None:
    """Headers are padded so the kernel copies whole pages; the files stay valid."""
    src = models / "unet" / "diffusion_pytorch_model.safetensors"
    out = tmp_path / "out"
    assert run_cli("shard", src, "-o", out, "--max-shard-size", "200KB").code == 0
    starts = {t.name: t.start for t in read_header(src).tensors}
    for f in sorted(out.glob("*.safetensors")):
        header = read_header(f)
        assert header.data_start % 8 == 0
        assert header.data_start % 4096 == starts[header.tensors[0].name] % 4096
        with safe_open(f, "pt") as handle:
            assert sorted(handle.keys()) == sorted(t.name for t in header.tensors)


# --- layout rules --------------------------------------------------------------------


def test_oversize_tensor_gets_a_shard_of_its_own(tmp_path: Path) -> None:
    sizes = [100, 1000, 100, 100, 40, 300]
    write_raw(
        tmp_path / "m.safetensors",
        [(f"t{i}", "U8", (n,), bytes([i]) * n) for i, n in enumerate(sizes)],
        format="pt",
    )
    out = tmp_path / "m-sharded"
    assert run_cli("shard", tmp_path / "m.safetensors", "--max-shard-size", "250").code == 0
    assert [(size, count) for _, size, count in shard_report(out)] == [
        (100, 1),
        (1000, 1),
        (240, 3),
        (300, 1),
    ]
    assert [r[0] for r in shard_report(out)][0] == "model-00001-of-00004.safetensors"


def test_one_shard_is_the_plain_name_without_index(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    assert run_cli("shard", models / "llama", "-o", out).code == 0
    assert sorted(p.name for p in out.glob("*.safetensors*")) == ["model.safetensors"]


def test_metadata_is_kept_and_format_added(tmp_path: Path) -> None:
    data = [("a", "F32", (2,), b"\0" * 8), ("b", "F32", (2,), b"\1" * 8)]
    write_raw(tmp_path / "meta.safetensors", data, format="pt", note="kept")
    write_raw(tmp_path / "bare.safetensors", data)
    for name, want in (("meta", {"format": "pt", "note": "kept"}), ("bare", {"format": "pt"})):
        out = tmp_path / f"{name}-out"
        args = ("shard", tmp_path / f"{name}.safetensors", "-o", out, "--max-shard-size", "8")
        assert run_cli(*args).code == 0

        for f in out.glob("*.safetensors"):
            with safe_open(f, "pt") as handle:
                assert handle.metadata() == want


def test_default_output_is_beside_the_source(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    shutil.copytree(models / "unet", work / "unet")
    monkeypatch.chdir(work)
    assert run_cli("shard", "unet/", "--max-shard-size", "1MB").code == 0
    assert (work / "unet-sharded" / "config.json").is_file()
    shutil.copy(FIXTURES / "single.safetensors", work / "x.safetensors")
    assert run_cli("shard", "x.safetensors").code == 0
    assert (work / "x-sharded" / "model.safetensors").is_file()
    shutil.rmtree(work / "unet-sharded")
    monkeypatch.chdir(work / "unet")
    assert run_cli("shard").code == 0  # SOURCE left out: the current folder
    assert (work / "unet-sharded").is_dir() and not list((work / "unet").glob("*-sharded"))


@pytest.mark.parametrize("where", ["inside", "equal", "contains"])
def test_output_inside_equal_or_around_the_source_is_refused(
    where: str, models: Path, tmp_path: Path
) -> None:
    src = copy_of(models / "llama", tmp_path / "parent" / "llama")
    out = {"inside": src / "out", "equal": src, "contains": tmp_path / "parent"}[where]
    before = tree_hash(tmp_path / "parent")
    result = run_cli("shard", src, "-o", out, "--force")
    assert result.code == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1  # one line in all
    assert "source" in result.stderr
    assert tree_hash(tmp_path / "parent") == before


def test_existing_output_needs_force_and_is_replaced_whole(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    shutil.copy(FIXTURES / "single.safetensors", out / "model.safetensors")  # an earlier output
    result = run_cli("shard", models / "llama", "-o", out)
    assert result.code == 2 and "--force" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "old.txt"]
    assert leftovers(tmp_path) == []
    assert run_cli("shard", models / "llama", "-o", out, "--force").code == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []


def test_json_document(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "shard", FIXTURES / "tiny-pipeline", "-o", out, "--max-shard-size", "1MB", "--json"
    )
    assert result.code == 0
    doc = json.loads(result.stdout)
    assert set(doc) == {"source", "output", "components", "bytes_written", "seconds"}
    assert doc["output"] == str(out)
    assert set(doc["components"]) == {"unet", "vae", "text_encoder"}
    unet = doc["components"]["unet"]
    assert unet["files"][0] == "unet/diffusion_pytorch_model-00001-of-00004.safetensors"
    assert unet["bytes"] == 3171856 and unet["tensors"] > 100
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert doc["bytes_written"] == written
    assert isinstance(doc["seconds"], float)


def test_links_leading_outside_the_source_are_not_followed(models: Path, tmp_path: Path) -> None:
    src = copy_of(models / "llama", tmp_path / "src")
    (tmp_path / "secret.txt").write_text("secret")
    (src / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (src / "alias.json").symlink_to("config.json")
    (src / "folder-link").symlink_to(src, target_is_directory=True)
    out = tmp_path / "out"
    result = run_cli("shard", src, "-o", out)
    assert result.code == 0, result.stderr
    assert "leak.txt is a link leading outside the source" in result.stderr
    assert not (out / "leak.txt").exists() and not (out / "folder-link").exists()
    assert not (out / "alias.json").is_symlink()
    assert (out / "alias.json").read_bytes() == (src / "config.json").read_bytes()


def test_hugging_face_cache_repo_id(models: Path, tmp_path: Path) -> None:
    """A repo id resolves in the cache, whose files link to ../../blobs: those are followed."""
    repo = tmp_path / "hf" / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    src = models / "unet"
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(src / name, repo / "blobs" / name.replace(".", "_"))
        (snapshot / name).symlink_to(f"../../blobs/{name.replace('.', '_')}")
    env = os.environ | {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = run_subprocess("shard", "org/tiny", "--max-shard-size", "1MB", cwd=tmp_path, env=env)
    assert result.code == 0, result.stderr
    out = tmp_path / "tiny-sharded"
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert_same_tensors(tensors_of(out), tensors_of(src))


def test_unsupported_cast_is_refused_before_writing(tmp_path: Path) -> None:
    write_raw(tmp_path / "f4.safetensors", [("packed", "F4", (4,), b"\x12\x34")], format="pt")
    result = run_cli(
        "shard", tmp_path / "f4.safetensors", "-o", tmp_path / "out", "--dtype", "fp16"
    )
    assert result.code == 2
    assert "packed" in result.stderr and "F4" in result.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_zero_max_shard_size_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(
        "shard", FIXTURES / "single.safetensors", "-o", tmp_path / "o", "--max-shard-size", "0"
    )
    assert result.code == 2 and "positive" in result.stderr


# --- atomic output, locks, faults ----------------------------------------------------


def test_leftovers_of_a_killed_run_are_cleaned(models: Path, tmp_path: Path) -> None:
    (tmp_path / ".out.bigmodel-tmp-999999" / "sub").mkdir(parents=True)
    (tmp_path / ".out.bigmodel-lock").write_text("")
    assert run_cli("shard", models / "llama", "-o", tmp_path / "out").code == 0
    assert leftovers(tmp_path) == []
    # Killed between the two renames of --force: the old OUT is put back, not lost.
    shutil.rmtree(tmp_path / "out")
    (tmp_path / ".out.bigmodel-old-999999").mkdir()
    (tmp_path / ".out.bigmodel-old-999999" / "mine.txt").write_text("user data")
    result = run_cli("shard", models / "llama", "-o", tmp_path / "out")
    assert result.code == 2 and "--force" in result.stderr
    assert (tmp_path / "out" / "mine.txt").read_text() == "user data"
    assert leftovers(tmp_path) == []


def test_two_runs_on_one_output_give_one_winner(models: Path, tmp_path: Path) -> None:
    lock = tmp_path / ".out.bigmodel-lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_cli("shard", models / "llama", "-o", tmp_path / "out")
        assert result.code == 2 and "another bigmodel run" in result.stderr
        assert not (tmp_path / "out").exists()
    finally:
        os.close(fd)
    lock.unlink()
    assert run_cli("shard", models / "llama", "-o", tmp_path / "out").code == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_atomic_folder_removes_everything_it_made_on_any_error(
    error: type[BaseException], tmp_path: Path
) -> None:
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(error), AtomicFolder(out, force=False) as folder:
        (folder.path / "part.safetensors").write_bytes(b"partial")
        raise error
    assert not (tmp_path / "new").exists()
    with AtomicFolder(out, force=False) as folder:  # the lock was released
        (folder.path / "done").write_text("ok")
        folder.commit()
    assert (out / "done").read_text() == "ok" and leftovers(out.parent) == []


def _unsupported(*args: object, **kwargs: object) -> int:
    raise OSError(errno.EXDEV, "Invalid cross-device link")


@pytest.mark.parametrize("broken", [["copy_file_range"], ["copy_file_range", "sendfile"]])
def test_copy_falls_back_when_the_kernel_call_is_unsupported(
    broken: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = FIXTURES / "tiny-pipeline"
    assert run_cli("shard", src, "-o", tmp_path / "fast", "--max-shard-size", "700KB").code == 0
    for name in broken:
        monkeypatch.setattr(os, name, _unsupported)
    assert run_cli("shard", src, "-o", tmp_path / "slow", "--max-shard-size", "700KB").code == 0
    assert tree_hash(tmp_path / "slow") == tree_hash(tmp_path / "fast")


@pytest.mark.parametrize("call", ["copy_file_range", "write"])
def test_disk_full_mid_write_leaves_nothing(
    call: str, models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = copy_of(models / "llama", tmp_path / "src")
    before = tree_hash(src)
    real = getattr(os, call)
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> int:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, failing)
    dtype = ["--dtype", "bf16"] if call == "write" else []
    result = run_cli("shard", src, "-o", tmp_path / "out", "--max-shard-size", "100KB", *dtype)
    monkeypatch.undo()
    assert calls["n"] > 5
    assert result.code == 2, result.stderr
    assert "No space left on device" in result.stderr and str(tmp_path / "out") in result.stderr
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []
    assert tree_hash(src) == before


def test_verification_catches_a_header_that_differs_from_the_plan(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = write.build_header
    monkeypatch.setattr(write, "build_header", lambda entries, meta: real(entries, {"x": "y"}))
    result = run_cli("shard", models / "llama", "-o", tmp_path / "out")
    assert result.code == 2 and "does not match the plan" in result.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_output_and_no_temp_folder(sig: int, tmp_path: Path) -> None:
    """Interrupted mid-write: exit 130, no OUT, no temporary folder. On a busy machine the
    run may finish before the signal lands (a complete OUT and exit 0, also nothing lost):
    then it is tried again, up to three times, and one must be caught."""
    src = sparse_checkpoint(tmp_path / "big.safetensors")
    before = tree_hash(src)
    out = tmp_path / "out"
    for _ in range(3):
        proc = subprocess.Popen(
            [*BIGMODEL, "shard", str(src), "-o", str(out), "--max-shard-size", "100MB"],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_temp_data(tmp_path)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert leftovers(tmp_path) == [] and tree_hash(src) == before
        if proc.returncode == 0:  # done before the signal: a whole OUT, then try again
            assert load_checkpoint(out).components[0].tensors
            shutil.rmtree(out)
            continue
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        assert not out.exists()
        return
    pytest.fail("the run finished before the signal three times")


def test_sharding_the_api_directly_returns_a_result(tmp_path: Path) -> None:
    result = shard(
        str(FIXTURES / "single.safetensors"),
        str(tmp_path / "o"),
        max_shard_size=1000,
        dtype=None,
        variant=None,
        force=False,
        progress=NullProgress(),
    )
    # In byte order: I64 head.bias; F32 embed (4096 bytes) alone; BF16 block 0 (512 bytes);
    # F16 block 1 + BOOL mask (528 bytes).
    (component,) = result.plan.components
    assert tuple(component.path(f.name) for f in component.files) == tuple(
        f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)
    )
    assert result.bytes_written == sum(p.stat().st_size for p in (tmp_path / "o").iterdir())
