"""Files from strangers: pickles that would run code, and legacy pickle formats."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tests.helpers.cli import assert_one_line_error, run_cli


class Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_code_running_pickle_is_refused_by_every_reader(tmp_path: Path) -> None:
    path, marker = _malicious(tmp_path)
    for args in (
        ["inspect", path],
        ["inspect", path.parent],
        ["shard", path.parent, "-o", tmp_path / "out"],
        ["plan", path.parent, "--max-memory", "cpu=1GB"],
    ):
        result = run_cli(*args)
        assert_one_line_error(result, 2, str(path), "refused to unpickle")
        assert not marker.exists(), args
    assert not (tmp_path / "out").exists()


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
