"""An output that cannot be written (a read-only file system, ``/proc``) is one line naming
it, exit 2: plans, shards, merges and the Hub mirror alike; a trace cache that cannot be
written is passed over.

The read-only file system is a real one (a ``tmpfs`` mounted read-only) where this
process may mount; elsewhere those cases are skipped and ``/proc`` still runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import FIXTURES, assert_one_line_error, run_cli
from tests.helpers.hub_env import serve

PIPE = FIXTURES / "tiny-pipeline"


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture(params=["proc", "erofs"])
def unwritable(request: pytest.FixtureRequest) -> Path:
    if request.param == "proc":
        return Path("/proc")
    return Path(request.getfixturevalue("read_only"))


@pytest.mark.parametrize(
    "args",
    [
        ("plan", PIPE, "--max-memory", "cpu=1GB", "-o", "{out}.json"),
        ("shard", FIXTURES / "single.safetensors", "-o", "{out}"),
        ("merge", FIXTURES / "single.safetensors", "-o", "{out}"),
        ("shard", FIXTURES / "single.safetensors", "-o", "{out}/deeper/still"),
    ],
    ids=["plan", "shard", "merge", "shard-deeper"],
)
def test_an_unwritable_output_is_one_line(unwritable: Path, args: tuple[object, ...]) -> None:
    out = str(unwritable / "bigmodel-out")
    result = run_cli(*(str(a).replace("{out}", out) for a in args))
    assert_one_line_error(result, 2, out, "cannot")


def test_an_unwritable_trace_cache_is_passed_over(
    read_only: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIGMODEL_TRACES", str(read_only / "traces"))
    result = run_cli("plan", PIPE, "--max-memory", "cpu=1GB", "--height", "64")
    assert result.code == 0, result.stderr


def test_an_unwritable_hf_home_is_one_line(
    read_only: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve(monkeypatch, read_only / "hf", test__pipe=PIPE):
        result = run_cli("inspect", "test/pipe")
    assert_one_line_error(result, 2, "test/pipe", "cannot write the mirror", "Read-only")
