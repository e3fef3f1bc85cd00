"""torch.distributed.checkpoint folders in: written by the real writer (FSDP2 DTensor shards and
plain tensors, 2 and 4 gloo ranks under torchrun, with optimizer state), read from their
metadata, merged and sharded into Hugging Face safetensors that transformers loads, every
tensor equal to what torch's own ``dcp_to_torch_save`` gives."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.dcp import write_dcp

KINDS = [("fsdp", 2), ("fsdp", 4), ("plain", 2), ("plain", 4)]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """Each DCP folder of :data:`KINDS`, written once for the module, on first use."""
    return _Lazy(tmp_path_factory)  # type: ignore[return-value]


class _Lazy(dict):  # type: ignore[type-arg]
    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, key: tuple[str, int]) -> Path:
        kind, nproc = key
        self[key] = write_dcp(self.factory.mktemp(f"dcp-{kind}-{nproc}"), kind, nproc)
        return self[key]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    found: dict[str, Any] = {}
    for key, value in items:
        found |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def _torch_reference(checkpoint: Path, tmp: Path) -> dict[str, Any]:
    """What torch's own converter makes of the folder, flattened: ``model.<name>``,
    ``optim.state...``."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint, tmp / "torch.pt")
    return _flatten(torch.load(tmp / "torch.pt", weights_only=True))


def _logits(folder: Path) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        return model(input_ids=torch.arange(12).reshape(2, 6) * 7 % 250).logits


@pytest.mark.parametrize(("kind", "nproc"), KINDS)
def test_merge_equals_torch_and_loads_in_transformers(
    written: dict[tuple[str, int], Path], tmp_path: Path, kind: str, nproc: int
) -> None:
    import torch
    from safetensors.torch import load_file

    folder = written[kind, nproc]
    out = tmp_path / "hf"
    result = run_cli("merge", str(folder / "checkpoint"), "-o", str(out))
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    merged = load_file(out / "model.safetensors")
    reference = _torch_reference(folder / "checkpoint", tmp_path)
    model = {k.removeprefix("model."): v for k, v in reference.items() if k.startswith("model.")}
    assert sorted(merged) == sorted(model)
    for name, tensor in model.items():
        assert torch.equal(merged[name], tensor), name
    assert torch.equal(_logits(out), _logits(folder / "reference"))
    assert "left out" in result.stderr  # the optimizer state, said so


def test_include_optimizer_writes_its_state_too(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    folder = written["fsdp", 2]
    out = tmp_path / "hf"
    args = ["shard", folder / "checkpoint", "-o", out, "--max-shard-size", "200KB"]
    result = run_cli(*args, "--include-optimizer")
    assert result.code == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged: dict[str, Any] = {}
    for name in sorted(set(index["weight_map"].values())):
        merged |= load_file(out / name)
    reference = _torch_reference(folder / "checkpoint", tmp_path)
    optim = {k: v for k, v in reference.items() if k.startswith("optim.state.")}
    assert any(k.endswith(".exp_avg_sq") for k in optim)
    for name, tensor in optim.items():
        assert torch.equal(merged[name], tensor), name
    assert "model.embed_tokens.weight" in merged


def test_shard_with_dtype_is_the_cast_and_byte_identical_across_runs(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    folder = written["fsdp", 4]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        args = ["shard", str(folder / "checkpoint"), "-o", str(out), "--max-shard-size", "100KB"]
        result = run_cli(*args, "--dtype", "bf16")
        assert result.code == 0, result.stderr
    files = sorted(p.name for p in outs[0].iterdir())
    assert len(files) > 3 and files == sorted(p.name for p in outs[1].iterdir())
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    reference = load_file(folder / "reference" / "model.safetensors")
    index = json.loads((outs[0] / "model.safetensors.index.json").read_text())
    for name, file in index["weight_map"].items():
        got = load_file(outs[0] / file)[name]
        assert got.dtype == torch.bfloat16 and torch.equal(got, reference[name].bfloat16()), name


def test_config_option_puts_config_json_in_out(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    source = tmp_path / "ckpt"
    shutil.copytree(written["plain", 2] / "checkpoint", source)
    (source / "config.json").unlink()
    config = written["plain", 2] / "reference" / "config.json"
    result = run_cli("merge", str(source), "-o", str(tmp_path / "hf"), "--config", str(config))
    assert result.code == 0, result.stderr
    assert (tmp_path / "hf" / "config.json").read_bytes() == config.read_bytes()
    bad = run_cli("merge", str(source), "-o", str(tmp_path / "x"), "--config", str(source))
    assert bad.code == 2 and "--config" in bad.stderr and not (tmp_path / "x").exists()


def test_inspect_and_plan_read_the_metadata_alone(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    """The .distcp files replaced by holes of the same size: the same answers."""
    source = written["fsdp", 4] / "checkpoint"
    hollow = tmp_path / "hollow"
    shutil.copytree(source, hollow)
    for f in hollow.glob("*.distcp"):
        size = f.stat().st_size
        f.unlink()
        with open(f, "wb") as out:
            out.truncate(size)
    for args in (["inspect", "--json"], ["plan", "--json", "--max-memory", "cpu=1GB"]):
        a, b = run_cli(args[0], source, *args[1:]), run_cli(args[0], hollow, *args[1:])
        assert a.code == b.code == 0, a.stderr + b.stderr
        doc_a, doc_b = json.loads(a.stdout), json.loads(b.stdout)
        text = json.dumps(doc_b).replace(str(hollow), str(source))
        if args[0] == "inspect":
            assert json.loads(text) == doc_a
            assert doc_a["total"]["tensors"] == 21
            assert doc_a["components"]["model"]["layout"] == "dcp"
        else:
            assert doc_a["device_map"] == doc_b["device_map"]


# --- the promises: one line naming the file, exit 2, nothing written --------------------


def _broken(written: dict[tuple[str, int], Path], tmp_path: Path) -> Path:
    source = tmp_path / "ckpt"
    shutil.copytree(written["fsdp", 2] / "checkpoint", source)
    return source


def _edit_metadata(source: Path, edit: Any) -> None:
    """Change the real writer's metadata as a broken writer would (torch's own pickle)."""
    import torch.distributed.checkpoint  # noqa: F401  (the classes the pickle names)

    meta = pickle.loads((source / ".metadata").read_bytes())
    edit(meta.state_dict_metadata["model.model.embed_tokens.weight"])
    (source / ".metadata").write_bytes(pickle.dumps(meta))


def _refused(source: Path, tmp_path: Path, needle: str, file: str) -> None:
    out = tmp_path / "out"
    result = run_cli("merge", str(source), "-o", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("bigmodel: error:"), result.stderr
    reason = lines[0].replace(str(tmp_path), "")  # the test's name is in tmp_path
    assert needle in reason and file in reason, lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left


def test_truncated_metadata_is_refused(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    source = _broken(written, tmp_path)
    data = (source / ".metadata").read_bytes()
    (source / ".metadata").write_bytes(data[: len(data) // 2])
    _refused(source, tmp_path, "not readable DCP metadata", ".metadata")


def test_metadata_calling_code_is_refused(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    source = _broken(written, tmp_path)
    (source / ".metadata").write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    _refused(source, tmp_path, "refused to unpickle: os.system", ".metadata")


def test_missing_distcp_is_refused(written: dict[tuple[str, int], Path], tmp_path: Path) -> None:
    source = _broken(written, tmp_path)
    (source / "__1_0.distcp").unlink()
    _refused(source, tmp_path, "names __1_0.distcp, which cannot be read", ".metadata")


def test_chunk_past_the_end_of_its_file_is_refused(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    source = _broken(written, tmp_path)
    with open(source / "__1_0.distcp", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    _refused(source, tmp_path, "past the end of __1_0.distcp", ".metadata")


def test_missing_chunk_is_refused(written: dict[tuple[str, int], Path], tmp_path: Path) -> None:
    source = _broken(written, tmp_path)
    _edit_metadata(source, lambda item: item.chunks.pop())
    _refused(source, tmp_path, "a chunk is missing", "model.model.embed_tokens.weight")


def test_overlapping_chunks_are_refused(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    source = _broken(written, tmp_path)
    _edit_metadata(source, lambda item: item.chunks.append(copy.deepcopy(item.chunks[0])))
    _refused(source, tmp_path, "overlap", ".metadata")


def test_a_record_that_is_not_torch_save_is_refused(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    source = _broken(written, tmp_path)
    with open(source / "__0_0.distcp", "r+b") as f:
        f.write(b"\0" * 4096)  # the first records' zip headers
    _refused(source, tmp_path, "not a torch.save record", "__0_0.distcp")


def test_shard_under_torchrun_is_byte_identical_to_one_process(
    written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    from tests.helpers.torchrun import run_world

    source = written["fsdp", 4] / "checkpoint"
    args = ["shard", source, "--max-shard-size", "100KB", "--dtype", "bf16"]
    one = run_cli(*args, "-o", tmp_path / "one")
    assert one.code == 0, one.stderr
    (world,) = run_world([*args, "-o", tmp_path / "world"], nproc=2, cwd=tmp_path)
    assert world.code == 0, world.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) > 3 and files == sorted(p.name for p in (tmp_path / "world").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "world" / name).read_bytes()
