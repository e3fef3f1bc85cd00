"""Small files from outside are read through one bounded reader: a regular file, at most a
limit of bytes, no link leading out of the checkpoint. A FIFO, a device, a socket, a
folder or a sparse 3 GB file is refused at once with one line naming it (exit 2).

The commands run under a watchdog: a regression (a hang on a FIFO) fails the test instead
of hanging the suite; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import read_small_file
from tests.helpers.cli import (
    FIXTURES,
    CliResult,
    assert_one_line_error,
    run_cli,
    run_cli_within,
)

PIPELINE = FIXTURES / "tiny-pipeline"
CPU = ("--max-memory", "cpu=1GB", "--strategy", "auto")  # auto reads each config.json
SECONDS = 300  # a bound on hangs, far beyond a trace on a busy machine


def bounded(*args: str | os.PathLike[str]) -> CliResult:
    return run_cli_within(SECONDS, *args)


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    folder = tmp_path / "pipe"
    shutil.copytree(PIPELINE, folder)
    return folder


def _replace(path: Path, how: str) -> None:
    """Put a hostile thing at ``path``: a link to /dev/zero, a FIFO, or a sparse 3 GB file."""
    path.unlink()
    if how == "zero":
        path.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate(3_000_000_000)


@pytest.mark.parametrize(
    ("how", "says"),
    [("zero", "link leading outside"), ("fifo", "a FIFO"), ("sparse", "more than")],
)
@pytest.mark.parametrize(
    "name",
    ["unet/config.json", "model_index.json", "unet/diffusion_pytorch_model.safetensors.index.json"],
)
def test_hostile_json_in_a_checkpoint_is_refused(
    pipeline: Path, name: str, how: str, says: str
) -> None:
    _replace(pipeline / name, how)
    result = bounded("plan", pipeline, *CPU)
    assert_one_line_error(result, 2, name.rsplit("/", 1)[-1], says)


def test_dev_zero_as_a_plan_is_refused(pipeline: Path) -> None:
    result = bounded("run", pipeline, "--plan", "/dev/zero")
    assert_one_line_error(result, 2, "/dev/zero", "a character device")


def test_a_fifo_as_a_plan_is_refused(pipeline: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    assert_one_line_error(bounded("run", pipeline, "--plan", fifo), 2, str(fifo), "a FIFO")


def test_a_plan_is_not_written_onto_a_fifo(pipeline: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    result = bounded("plan", pipeline, *CPU, "-o", fifo)
    assert_one_line_error(result, 2, str(fifo), "not a bigmodel plan")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_among_the_kept_traces_is_traced_again(pipeline: Path, tmp_path: Path) -> None:
    args = ("plan", pipeline, *CPU, "--height", "64", "--json")
    first = run_cli(*args)
    assert first.code == 0, first.stderr
    kept = sorted((tmp_path / "traces").glob("*.json"))  # BIGMODEL_TRACES, from conftest
    assert len(kept) == 3
    for path in kept:
        _replace(path, "fifo")
    again = bounded(*args)
    assert again.code == 0, again.stderr
    notes = [c.get("note", "") for c in json.loads(again.stdout)["components"].values()]
    assert all("a FIFO" in n and "traced again" in n for n in notes), notes
    want = {k: v["activations"] for k, v in json.loads(first.stdout)["components"].items()}
    got = {k: v["activations"] for k, v in json.loads(again.stdout)["components"].items()}
    assert got == want


def test_a_socket_and_a_folder_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(BigmodelError, match="config"):
            read_small_file(path, "config", 1000)
    with pytest.raises(BigmodelError, match="a folder, not a regular file"):
        read_small_file(tmp_path, "config", 1000)


def test_a_link_inside_the_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "config.json").symlink_to("real.json")
    assert read_small_file(tmp_path / "config.json", "config", 10, inside=tmp_path) == b"{}"
    with pytest.raises(BigmodelError, match="more than 1"):
        read_small_file(tmp_path / "config.json", "config", 1, inside=tmp_path)


def test_a_broken_config_is_an_error_naming_it(pipeline: Path) -> None:
    (pipeline / "vae" / "config.json").write_text("{not json")
    result = run_cli("plan", pipeline, *CPU)
    assert_one_line_error(result, 2, "vae/config.json", "not valid JSON")
