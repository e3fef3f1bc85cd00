"""Files from strangers: pickles that would run code, and legacy pickle formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import assert_one_line_error, run_cli


class Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding a ``pytorch_model.bin`` whose unpickling would create ``marker``,
    and a plan for it (made while it held the same tensor without the payload, as a plan
    made before someone swapped the file would be)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save({"weight": torch.zeros(2)}, path)
    made = run_cli("plan", path.parent, "--max-memory", "cpu=1GB", "-o", tmp_path / "plan.json")
    assert made.code == 0, made.stderr
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


COMMANDS = {  # every command that reads a checkpoint, and its arguments after SOURCE
    "inspect": [],
    "inspect-file": [],
    "shard": ["-o", "{tmp}/out"],
    "merge": ["-o", "{tmp}/out"],
    "plan": ["--max-memory", "cpu=1GB", "-o", "{tmp}/new-plan.json"],
    "run": ["--plan", "{tmp}/plan.json"],
    "run-verify": ["--plan", "{tmp}/plan.json", "--verify"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_code_running_pickle_is_refused_and_never_run_by_every_command(
    tmp_path: Path, command: str
) -> None:
    path, marker = _malicious(tmp_path)
    source = path if command == "inspect-file" else path.parent
    args = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    result = run_cli(command.split("-")[0], source, *args)
    assert_one_line_error(result, 2, str(path), "refused to unpickle")
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "out").exists() and not (tmp_path / "new-plan.json").exists()


def test_legacy_non_zip_pickle_is_read(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(3, 2)}, path, _use_new_zipfile_serialization=False)
    result = run_cli("inspect", path, "--json")
    assert result.code == 0, result.stderr
    assert '"parameters": 6' in result.stdout


def test_pickle_without_tensors_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    torch.save({"step": 3}, path)
    assert_one_line_error(run_cli("inspect", path), 2, str(path), "no named tensors")


def test_garbage_bin_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a pickle at all")
    assert_one_line_error(run_cli("inspect", path), 2, str(path))


def test_sparse_and_meta_pickle_tensors_are_bad_input(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.bin"
    torch.save({"w": torch.eye(3).to_sparse(), "b": torch.zeros(3)}, sparse)
    meta = tmp_path / "meta.bin"
    torch.save({"w": torch.empty(3, device="meta")}, meta)
    for path in (sparse, meta):
        for args in (["inspect", path], ["shard", path, "-o", tmp_path / "out"]):
            assert_one_line_error(run_cli(*args), 2, str(path), "only dense tensors")
    assert not (tmp_path / "out").exists()
