"""Paths the system refuses (a link loop, a name part over 255 bytes, a file where a folder
should be, a NUL byte) and an index that maps nothing: exit 2 and one line naming the
path, never an unexpected error (exit 1); the API names the argument."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import bigmodel_cli as bm
from bigmodel_cli.errors import UsageError
from tests.helpers.cli import FIXTURES, assert_one_line_error, run_cli

SINGLE = FIXTURES / "single.safetensors"
LONG = "a" * 300  # a name part over the 255 bytes a file system takes


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    link = tmp_path / "loop"
    link.symlink_to("loop")
    return link


@pytest.mark.parametrize("command", ["inspect", "plan", "shard", "merge"])
def test_a_symlink_loop_as_source_is_one_line(command: str, loop: Path, tmp_path: Path) -> None:
    extra = ["-o", tmp_path / "out"] if command in ("shard", "merge") else []
    assert_one_line_error(run_cli(command, loop, *extra), 2, str(loop), "symlink loop")
    assert_one_line_error(run_cli(command, loop / "x", *extra), 2, "cannot use this path")


@pytest.mark.parametrize("source", [LONG, f"{LONG}/{LONG}", f"org/{LONG}"])
def test_a_name_too_long_as_source_is_one_line(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # org/aaa... reads as a repo id
    monkeypatch.chdir(tmp_path)
    result = run_cli("plan", source)
    assert result.code == 2 and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("where", ["under a file", "in a loop", "too long"])
def test_plan_o_where_no_file_can_be_is_one_line(where: str, loop: Path, tmp_path: Path) -> None:
    shutil.copy(SINGLE, tmp_path / "single.safetensors")
    out = {
        "under a file": tmp_path / "single.safetensors" / "plan.json",
        "in a loop": loop / "plan.json",
        "too long": tmp_path / f"{LONG}.json",
    }[where]
    result = run_cli("plan", SINGLE, "-o", out)
    assert_one_line_error(result, 2, "cannot use this path")


def test_an_index_that_maps_nothing_is_one_line(tmp_path: Path) -> None:
    shutil.copy(SINGLE, tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    assert_one_line_error(run_cli("inspect", tmp_path), 2, "index.json", "weight_map is empty")


@pytest.mark.parametrize(
    ("argument", "call"),
    [
        ("source", lambda t: bm.inspect(str(t / "a\x00b"))),
        ("source", lambda t: bm.plan("\ud800")),
        ("output", lambda t: bm.shard(SINGLE, str(t / "o\x00"))),
        ("config", lambda t: bm.merge(SINGLE, t / "o", config="c\x00")),
        ("path", lambda t: bm.read_plan("plan\x00.json")),
    ],
)
def test_the_api_names_a_path_the_system_cannot_take(
    argument: str, call: Any, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match=f"^{argument} must be a path") as info:
        call(tmp_path)
    assert info.value.argument == argument
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "call",
    [
        lambda t: bm.shard(SINGLE, t / "o", progress="bar"),
        lambda t: bm.merge(SINGLE, t / "o", progress=object()),
        lambda t: bm.run_plan(SINGLE, plan=bm.plan(SINGLE, max_memory="cpu=1GB"), progress=5),
    ],
)
def test_a_progress_that_is_no_progress_bar_is_named(call: Any, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="^progress must be a progress bar"):
        call(tmp_path)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["under a file", "in a loop", "too long"])
def test_the_one_atomic_writer_names_a_path_no_file_can_have(
    where: str, loop: Path, tmp_path: Path
) -> None:
    """Plans, images and kept files are written by write_atomically: its checks of the
    path end in one error naming it, whoever calls it."""
    from bigmodel_cli.errors import BigmodelError
    from bigmodel_cli.formats.json import write_json_atomically

    (tmp_path / "file").write_text("")
    path = {
        "under a file": tmp_path / "file" / "x.json",
        "in a loop": loop / "x.json",
        "too long": tmp_path / f"{LONG}.json",
    }[where]
    with pytest.raises(BigmodelError, match="cannot use this path"):
        write_json_atomically(path, {})
