"""``--force`` replaces only what this tool writes: an empty folder or a checkpoint /
pipeline layout. Someone's photos and notes, a file, the current folder or a folder
holding it are refused with one line, and nothing is deleted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.cli import FIXTURES, assert_one_line_error, run_cli
from tests.helpers.trees import tree_hash

SOURCE = FIXTURES / "single.safetensors"


def photos(folder: Path) -> Path:
    (folder / "holiday").mkdir(parents=True)
    (folder / "holiday" / "beach.jpg").write_bytes(b"\xff\xd8\xff\xe0 a photo")
    (folder / "notes.txt").write_text("things to remember")
    return folder


@pytest.mark.parametrize("command", ["shard", "merge"])
def test_force_refuses_a_folder_that_is_not_a_checkpoint(tmp_path: Path, command: str) -> None:
    out = photos(tmp_path / "out")
    before = tree_hash(out)
    result = run_cli(command, SOURCE, "-o", out, "--force")
    assert_one_line_error(result, 2, str(out), "holds no checkpoint")
    assert tree_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_force_refuses_a_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    result = run_cli("shard", SOURCE, "-o", out, "--force")
    assert_one_line_error(result, 2, "not a folder this tool wrote")
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("where", ["dot", "ancestor"])
def test_force_never_replaces_the_current_folder_or_one_holding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    out = tmp_path / "out"
    assert run_cli("shard", SOURCE, "-o", out).code == 0  # a layout --force could replace
    (out / "sub").mkdir()
    (out / "sub" / "mine.txt").write_text("mine")
    before = tree_hash(out)
    monkeypatch.chdir(out if where == "dot" else out / "sub")
    result = run_cli("shard", SOURCE, "-o", "." if where == "dot" else out, "--force")
    assert_one_line_error(result, 2, "current folder")
    assert tree_hash(out) == before


def test_force_replaces_an_earlier_output_and_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("shard", SOURCE, "-o", out, "--max-shard-size", "100").code == 0
    assert len(list(out.glob("*.safetensors"))) > 1
    assert run_cli("shard", SOURCE, "-o", out, "--force").code == 0
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    shutil.rmtree(out)
    out.mkdir()
    assert run_cli("merge", SOURCE, "-o", out, "--force").code == 0
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "bait", ["empty .bin", "empty model_index.json", "link to /etc/passwd", "weights in a repo"]
)
def test_force_refuses_someones_files_beside_a_weights_like_name(tmp_path: Path, bait: str) -> None:
    """One file with a checkpoint's name does not make a checkpoint: the folder must read
    as one (valid headers, complete index, no link leading out)."""
    out = photos(tmp_path / "out")
    if bait == "empty .bin":
        (out / "old.bin").write_bytes(b"")
    elif bait == "empty model_index.json":
        (out / "model_index.json").write_text("{}")
    elif bait == "link to /etc/passwd":
        (out / "model.safetensors").symlink_to("/etc/passwd")
    else:  # a project under git that holds a valid checkpoint: not replaced whole
        (out / ".git").mkdir()
        (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        shutil.copy(SOURCE, out / "model.safetensors")
    before = tree_hash(out)
    result = run_cli("shard", SOURCE, "-o", out, "--force")
    assert_one_line_error(result, 2, str(out), "holds no checkpoint")
    assert tree_hash(out) == before


def test_force_replaces_a_checkpoint_of_another_variant(tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(FIXTURES / "tiny-pipeline" / "vae", out)
    weights = out / "diffusion_pytorch_model.safetensors"
    weights.rename(out / "diffusion_pytorch_model.fp16.safetensors")
    assert run_cli("shard", SOURCE, "-o", out, "--force").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


def test_force_never_unpickles_what_is_in_out(tmp_path: Path) -> None:
    """A .bin in OUT is not this tool's (it writes safetensors) and is not read: reading it
    would import torch and load the whole pickle, three times, to decide."""
    import torch

    out = tmp_path / "out"
    out.mkdir()
    torch.save({"w": torch.zeros(4)}, out / "pytorch_model.bin")
    before = tree_hash(out)
    result = run_cli("merge", SOURCE, "-o", out, "--force")
    assert_one_line_error(result, 2, "pytorch_model.bin", "pickle weights")
    assert tree_hash(out) == before
