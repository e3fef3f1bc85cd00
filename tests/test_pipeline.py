"""The whole pipeline, sharded then merged, loads in diffusers' StableDiffusionPipeline."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.cli import FIXTURES, run_cli


def _load(path: Path):  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path, safety_checker=None)


def test_sharded_and_merged_pipelines_load_in_diffusers_with_the_same_weights(
    tmp_path: Path,
) -> None:
    sharded, merged = tmp_path / "sharded", tmp_path / "merged"
    assert (
        run_cli(
            "shard", FIXTURES / "tiny-pipeline", "-o", sharded, "--max-shard-size", "500KB"
        ).code
        == 0
    )
    assert run_cli("merge", sharded, "-o", merged).code == 0
    assert len(list((sharded / "unet").glob("*.safetensors"))) > 1
    assert len(list((merged / "unet").glob("*.safetensors"))) == 1
    original = _load(FIXTURES / "tiny-pipeline")
    for path in (sharded, merged):
        pipe = _load(path)
        for name in ("unet", "vae", "text_encoder"):
            mine, theirs = getattr(pipe, name).state_dict(), getattr(original, name).state_dict()
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine), (path, name)


def test_a_file_with_a_name_of_its_own_shards_into_names_from_pretrained_finds(
    tmp_path: Path,
) -> None:
    from transformers import LlamaForCausalLM

    merged = tmp_path / "merged"
    assert run_cli("merge", FIXTURES / "tiny-llama", "-o", merged).code == 0
    (merged / "model.safetensors").rename(merged / "my-finetune.safetensors")
    out = tmp_path / "out"
    assert run_cli("shard", merged, "-o", out, "--max-shard-size", "300KB").code == 0
    assert (out / "model.safetensors.index.json").is_file()
    assert (out / "model-00001-of-00003.safetensors").is_file()
    model = LlamaForCausalLM.from_pretrained(out)
    reference = LlamaForCausalLM.from_pretrained(FIXTURES / "tiny-llama")
    mine, theirs = model.state_dict(), reference.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_other_weights_beside_a_component_are_not_copied(tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "llama"
    shutil.copytree(FIXTURES / "tiny-llama", src)
    shutil.copy(FIXTURES / "legacy" / "pytorch_model.bin", src / "pytorch_model.bin")
    (src / "notes.txt").write_text("kept")
    out = tmp_path / "out"
    result = run_cli("shard", src, "-o", out, "--max-shard-size", "10MB")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "notes.txt",
    ]
    assert "not copied: pytorch_model.bin" in result.stderr
    assert "pass --variant to shard that one" in result.stderr  # the CLI's flag for variant


def test_dotted_single_file_names_are_not_variants(tmp_path: Path) -> None:
    """`sd_xl_base_1.0.safetensors` is a name, not variant "0" of something."""
    import shutil

    src = tmp_path / "sd_xl_base_1.0.safetensors"
    shutil.copy(FIXTURES / "single.safetensors", src)
    out = tmp_path / "sharded"
    assert run_cli("shard", src, "-o", out, "--max-shard-size", "2KB").code == 0
    assert (out / "model.safetensors.index.json").is_file()
    assert all(p.name.startswith("model-0000") for p in out.glob("*.safetensors"))
    assert run_cli("inspect", out).code == 0
    merged = tmp_path / "merged"
    assert run_cli("merge", out, "-o", merged).code == 0
    assert [p.name for p in merged.iterdir()] == ["model.safetensors"]
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(src, folder / src.name)
    assert run_cli("inspect", folder).code == 0
