"""`bigmodel inspect` and checkpoint discovery, against layouts the real libraries write."""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bigmodel_cli.checkpoint import load_checkpoint
from bigmodel_cli.checkpoint.blocks import group_blocks
from tests.helpers.checkpoints import make_hf_cache, tiny_unet
from tests.helpers.cli import FIXTURES, assert_one_line_error, run_cli, run_subprocess


def _safe_open_totals(folder: Path) -> dict[str, int]:
    """Tensor count, parameters and bytes of every .safetensors file under ``folder``."""
    tensors = params = nbytes = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                t = f.get_slice(key)
                shape = t.get_shape()
                n = 1
                for d in shape:
                    n *= d
                tensors += 1
                params += n
                nbytes += f.get_tensor(key).element_size() * n
    return {"tensors": tensors, "parameters": params, "bytes": nbytes}


def _inspect_json(*args: str | Path) -> dict:  # type: ignore[type-arg]
    result = run_cli("inspect", *args, "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("pipeline", ["diffusers_pipeline", "diffusers_pipeline_sharded"])
def test_inspect_matches_safe_open_on_pipelines_saved_by_diffusers(
    pipeline: str, request: pytest.FixtureRequest
) -> None:
    root: Path = request.getfixturevalue(pipeline)
    doc = _inspect_json(root)
    assert set(doc["components"]) == {"unet", "vae", "text_encoder"}
    assert set(doc["skipped"]) >= {"scheduler", "tokenizer"}
    for name, comp in doc["components"].items():
        expected = _safe_open_totals(root / name)
        assert {k: comp[k] for k in expected} == expected, name
    if pipeline.endswith("sharded"):
        assert doc["components"]["unet"]["layout"] == "sharded"
        assert len(doc["components"]["unet"]["files"]) > 1
    assert doc["total"]["bytes"] == sum(c["bytes"] for c in doc["components"].values())


def test_inspect_matches_safe_open_on_transformers_sharded_model(llama_sharded: Path) -> None:
    doc = _inspect_json(llama_sharded)
    (comp,) = doc["components"].values()
    assert comp["layout"] == "sharded"
    assert len(comp["files"]) > 1
    expected = _safe_open_totals(llama_sharded)
    assert {k: comp[k] for k in expected} == expected
    assert "model.layers.0" in comp["blocks"]
    assert comp["largest_tensor"]["bytes"] == max(
        t.nbytes for t in load_checkpoint(llama_sharded).components[0].tensors
    )


def test_inspect_dtype_changes_floating_bytes_only() -> None:
    doc = _inspect_json(FIXTURES / "single.safetensors", "--dtype", "fp16")
    comp = doc["components"]["model"]
    # float32 64x16 halves; bf16 and fp16 stay 2 bytes; int64 and bool keep their size.
    assert comp["bytes"] - comp["bytes_at_dtype"] == 64 * 16 * 2
    assert comp["dtypes"] == {
        "int64": 16,
        "float32": 1024,
        "bfloat16": 256,
        "float16": 256,
        "bool": 16,
    }
    assert doc["dtype"] == "float16"


def test_inspect_tensors_lists_every_tensor() -> None:
    doc = _inspect_json(FIXTURES / "tiny-llama", "--tensors")
    (comp,) = doc["components"].values()
    assert len(comp["tensor_list"]) == comp["tensors"]
    first = comp["tensor_list"][0]
    assert set(first) == {"name", "dtype", "shape", "bytes", "file"}
    human = run_cli("inspect", FIXTURES / "tiny-llama", "--tensors")
    assert human.code == 0 and "model.layers.3.mlp.up_proj.weight" in human.stdout


def test_inspect_legacy_pickle_reads_metadata_only() -> None:
    doc = _inspect_json(FIXTURES / "legacy")
    (comp,) = doc["components"].values()
    assert comp["layout"] == "pickle"
    assert comp["tensors"] == 3 and comp["parameters"] == 2304


def test_human_output_is_a_table() -> None:
    result = run_cli("inspect", FIXTURES / "tiny-pipeline")
    assert result.code == 0
    assert "unet" in result.stdout and "sharded" in result.stdout
    assert "skipped" in result.stdout


def test_source_defaults_to_the_current_folder() -> None:
    result = run_subprocess("inspect", "--json", cwd=FIXTURES / "tiny-pipeline")
    assert result.code == 0, result.stderr
    assert set(json.loads(result.stdout)["components"]) == {"unet", "vae", "text_encoder"}


def test_variant_selects_variant_files(tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    folder.mkdir()
    save_file({"a.weight": torch.zeros(4)}, str(folder / "diffusion_pytorch_model.safetensors"))
    save_file(
        {"a.weight": torch.zeros(4).half()},
        str(folder / "diffusion_pytorch_model.fp16.safetensors"),
    )
    plain = _inspect_json(folder)["components"]["unet"]
    fp16 = _inspect_json(folder, "--variant", "fp16")["components"]["unet"]
    assert plain["dtypes"] == {"float32": 4} and fp16["dtypes"] == {"float16": 4}


def test_variant_of_a_sharded_pipeline_saved_by_diffusers(tmp_path: Path) -> None:
    tiny_unet().half().save_pretrained(tmp_path / "unet", variant="fp16", max_shard_size="300KB")
    comp = _inspect_json(tmp_path / "unet", "--variant", "fp16")["components"]["unet"]
    assert comp["layout"] == "sharded" and comp["dtypes"] == {"float16": comp["parameters"]}
    assert_one_line_error(run_cli("inspect", tmp_path / "unet"), 2, "no *.safetensors")


def test_repo_id_resolves_in_the_local_hf_cache_offline(tmp_path: Path) -> None:
    make_hf_cache(tmp_path, "tiny-org/tiny-llama", FIXTURES / "tiny-llama")
    env = os.environ | {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = run_subprocess("inspect", "tiny-org/tiny-llama", "--json", env=env, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["components"]["tiny-llama"]["tensors"] == 39
    missing = run_subprocess("inspect", "tiny-org/absent", env=env, cwd=tmp_path)
    assert_one_line_error(missing, 2, "tiny-org/absent", "Hugging Face cache")


def test_cached_sharded_pipeline_is_read_and_sharded_whole(tmp_path: Path) -> None:
    """Snapshot files are links into ../../blobs: allowed, and followed when copying."""
    snapshot = make_hf_cache(tmp_path / "hf", "org/pipe", FIXTURES / "tiny-pipeline")
    assert (snapshot / "unet" / "config.json").is_symlink()
    doc = _inspect_json(snapshot)
    assert doc["components"]["unet"]["layout"] == "sharded"
    out = tmp_path / "out"
    result = run_cli("shard", snapshot / "unet", "-o", out, "--max-shard-size", "1MB")
    assert result.code == 0 and "warning" not in result.stderr, result.stderr
    assert (out / "config.json").read_bytes() == (
        FIXTURES / "tiny-pipeline/unet/config.json"
    ).read_bytes()
    whole = tmp_path / "whole"
    assert run_cli("merge", snapshot, "-o", whole).code == 0
    for f in (FIXTURES / "tiny-pipeline").rglob("*.json"):
        if "index" not in f.name:
            assert (whole / f.relative_to(FIXTURES / "tiny-pipeline")).is_file(), f


def test_inspect_does_not_import_torch_for_safetensors() -> None:
    code = (
        "import sys; from bigmodel_cli.cli import run_main\n"
        "run_main(['inspect', sys.argv[1], '--json'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "run_main(['--help'])"
    )
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", code, str(FIXTURES / "tiny-pipeline")],
        capture_output=True,
        text=True,
    )
    assert "torch imported" not in proc.stderr, proc.stderr
    assert '"components"' in proc.stdout


def test_blocks_group_dotted_names() -> None:
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up.weight",
        "model.layers.10.mlp.up.weight",
        "model.norm.weight",
        "lm_head.weight",
        "down_blocks.1.resnets.0.conv1.weight",
        "conv_in.weight",
    ]
    assert group_blocks(names) == {
        "model.embed_tokens.weight": "model.embed_tokens",
        "model.layers.0.mlp.up.weight": "model.layers.0",
        "model.layers.10.mlp.up.weight": "model.layers.10",
        "model.norm.weight": "model.norm",
        "lm_head.weight": "lm_head",
        "down_blocks.1.resnets.0.conv1.weight": "down_blocks.1",
        "conv_in.weight": "conv_in",
    }


# ---- malformed inputs: exit 2, one line naming the file, no traceback ----


def _copy_llama(tmp_path: Path) -> Path:
    folder = tmp_path / "llama"
    shutil.copytree(FIXTURES / "tiny-llama", folder)
    return folder


def _edit_index(folder: Path, edit: object) -> Path:
    path = folder / "model.safetensors.index.json"
    doc = json.loads(path.read_text())
    edit(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    return path


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes((FIXTURES / "single.safetensors").read_bytes()[:-10])
    assert_one_line_error(run_cli("inspect", path), 2, str(path), "file has")


def test_header_length_past_end_of_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 5000) + b"{}")
    assert_one_line_error(run_cli("inspect", path), 2, str(path), "past the end")


def test_invalid_json_header(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 8) + b"{not js}")
    assert_one_line_error(run_cli("inspect", path), 2, str(path), "not valid JSON")


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    ).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    assert_one_line_error(run_cli("inspect", path), 2, str(path), "'b'", "overlaps")


def test_index_naming_a_missing_file(tmp_path: Path) -> None:
    folder = _copy_llama(tmp_path)
    (folder / "model-00002-of-00004.safetensors").unlink()
    assert_one_line_error(
        run_cli("inspect", folder), 2, "model.safetensors.index.json", "does not exist"
    )


def test_index_naming_a_missing_tensor(tmp_path: Path) -> None:
    folder = _copy_llama(tmp_path)
    _edit_index(
        folder,
        lambda d: d["weight_map"].update({"ghost.weight": "model-00001-of-00004.safetensors"}),
    )
    assert_one_line_error(run_cli("inspect", folder), 2, "ghost.weight", "not found")


def test_index_total_size_that_disagrees(tmp_path: Path) -> None:
    folder = _copy_llama(tmp_path)
    _edit_index(folder, lambda d: d["metadata"].update({"total_size": 12}))
    assert_one_line_error(run_cli("inspect", folder), 2, "total_size is 12")


@pytest.mark.parametrize(
    "name", ["../model-00001-of-00004.safetensors", "/etc/passwd", "sub/x.safetensors"]
)
def test_path_traversal_in_weight_map(tmp_path: Path, name: str) -> None:
    folder = _copy_llama(tmp_path)
    _edit_index(folder, lambda d: d["weight_map"].update({"lm_head.weight": name}))
    assert_one_line_error(run_cli("inspect", folder), 2, "index.json", "not a plain file name")


def test_symlinked_shard_leading_outside_is_refused(tmp_path: Path) -> None:
    folder = _copy_llama(tmp_path)
    outside = tmp_path / "outside.safetensors"
    shard = folder / "model-00004-of-00004.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    assert_one_line_error(run_cli("inspect", folder), 2, "link leading outside")


def test_empty_folder_suggests_a_component(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "tiny-pipeline" / "vae", tmp_path / "vae")
    assert_one_line_error(run_cli("inspect", tmp_path), 2, "did you mean", "vae")


def test_missing_path() -> None:
    assert_one_line_error(run_cli("inspect", "/nonexistent/x.safetensors"), 2, "no such file")


def test_bad_dtype_flag_names_the_value() -> None:
    assert_one_line_error(
        run_cli("inspect", FIXTURES / "single.safetensors", "--dtype", "fp12"), 2, "fp12"
    )


def test_help_lists_the_five_commands() -> None:
    result = run_cli("--help")
    for command in ("inspect", "shard", "merge", "plan", "run"):
        assert command in result.stdout
    assert run_cli("--version").stdout.startswith("bigmodel ")


def test_legacy_variant_index_layout_is_read(tmp_path: Path) -> None:
    """diffusers' legacy `diffusion_pytorch_model.safetensors.fp16.index.json` naming."""
    folder = tmp_path / "unet"
    tiny_unet().half().save_pretrained(folder, variant="fp16", max_shard_size="300KB")
    (index,) = folder.glob("*.index*.json")
    index.rename(folder / "diffusion_pytorch_model.safetensors.fp16.index.json")
    comp = _inspect_json(folder, "--variant", "fp16")["components"]["unet"]
    assert comp["layout"] == "sharded" and comp["dtypes"] == {"float16": comp["parameters"]}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["inspect", "--bogus"], "--bogus"),
        (["frob"], "frob"),
        (["plan", "--max-memory"], "--max-memory"),
        (["shard", "a", "b"], "unexpected extra argument"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args: list[str], needle: str) -> None:
    assert_one_line_error(run_subprocess(*args), 2, needle)


def test_no_arguments_prints_help() -> None:
    result = run_subprocess()
    assert result.code == 0 and "inspect" in result.stdout and "plan" in result.stdout


def test_only_variant_weights_suggest_the_variant_flag(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    shutil.copy(FIXTURES / "tiny-pipeline" / "model_index.json", tmp_path)
    save_file(
        {"a": torch.zeros(2).half()},
        str(tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors"),
    )
    assert_one_line_error(run_cli("inspect", tmp_path), 2, "did you mean --variant fp16?")
    assert_one_line_error(run_cli("inspect", tmp_path / "unet"), 2, "did you mean --variant fp16?")
    assert run_cli("inspect", tmp_path, "--variant", "fp16").code == 0


def test_tensor_missing_from_the_weight_map_is_named(tmp_path: Path) -> None:
    folder = _copy_llama(tmp_path)
    _edit_index(folder, lambda d: d["weight_map"].pop("lm_head.weight"))
    assert_one_line_error(run_cli("inspect", folder), 2, "'lm_head.weight'", "does not list it")


def test_sharded_files_are_listed_in_shard_order() -> None:
    (comp,) = _inspect_json(FIXTURES / "tiny-llama")["components"].values()
    assert comp["files"] == sorted(comp["files"])


@pytest.mark.parametrize("command", ["inspect", "shard", "merge", "plan", "run"])
def test_every_command_help_shows_an_example(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.code == 0
    assert f"Example: bigmodel {command} " in " ".join(result.stdout.split())


@pytest.mark.parametrize("layout", ["single model", "pipeline component"])
@pytest.mark.parametrize("command", ["inspect", "plan", "shard", "merge"])
def test_a_lone_weights_file_linking_outside_is_refused(
    tmp_path: Path, layout: str, command: str
) -> None:
    """Without an index, the one weights file of a folder is held to the same rule as an
    index's shards: a link leading out of the folder is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    if layout == "single model":
        root = folder = tmp_path / "model"
        folder.mkdir()
        weights = folder / "model.safetensors"
        shutil.copy(FIXTURES / "single.safetensors", outside / "secret.safetensors")
    else:
        root = tmp_path / "pipe"
        shutil.copytree(FIXTURES / "tiny-pipeline", root)
        folder = root / "vae"
        weights = folder / "diffusion_pytorch_model.safetensors"
        weights.rename(outside / "secret.safetensors")
    weights.unlink(missing_ok=True)
    weights.symlink_to(outside / "secret.safetensors")
    extra = ["-o", tmp_path / "out"] if command in ("shard", "merge") else []
    result = run_cli(command, root, *extra)
    assert_one_line_error(result, 2, "weights file", "link leading outside")
    assert not (tmp_path / "out").exists()


def test_a_link_to_a_weights_file_inside_the_folder_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(FIXTURES / "single.safetensors", folder / "real.safetensors.orig")
    (folder / "model.safetensors").symlink_to("real.safetensors.orig")
    result = run_cli("inspect", folder, "--json")
    assert result.code == 0, result.stderr


def test_an_empty_pickle_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"")  # torch.load: EOFError with no text
    assert_one_line_error(run_cli("inspect", tmp_path / "pytorch_model.bin"), 2, "EOFError")


def test_a_device_as_source_is_named_as_such() -> None:
    assert_one_line_error(run_cli("inspect", "/dev/zero"), 2, "/dev/zero", "not a regular file")
