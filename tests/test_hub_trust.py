"""What the Hub says is checked before it is used: a listed file name never becomes a path
outside the mirror, and a mirror damaged on disk is rebuilt, not planned without a part.

Against the stand-in Hub (``tests/helpers/hub_server.py``), through the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import FIXTURES
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.hub_env import serve

PIPE = FIXTURES / "tiny-pipeline"
BODY = b'{"pwned": true}'


def hostile_names(tmp_path: Path) -> list[str]:
    """The issue's three, one deep enough to leave HF_HOME, and an absolute one in tmp."""
    return [
        "../../x/pwned.json",
        "/x/pwned.json",
        "unet/../../x/pwned.json",
        "../" * 8 + "x/pwned.json",
        f"{tmp_path}/abs/pwned.json",
    ]


def created_outside(tmp_path: Path, home: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("pwned.json") if home not in p.parents]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("command", ["inspect", "plan"])
def test_a_hostile_file_name_is_refused_and_nothing_is_written(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, index: int, command: str
) -> None:
    name = hostile_names(tmp_path)[index]
    monkeypatch.chdir(tmp_path)
    with serve(monkeypatch, home, test__pipe=PIPE) as hub:
        hub.extra = {"test/pipe": {name: BODY}}
        args = ["--max-memory", "cpu=1GB"] if command == "plan" else []
        result = run_cli(command, "test/pipe", *args)
    assert_one_line_error(result, 2, "test/pipe", repr(name), "not a plain relative name")
    assert created_outside(tmp_path, home) == []
    assert list(home.rglob("pwned.json")) == []
    assert not Path("/x/pwned.json").exists()
    mirrors = home / "bigmodel" / "hub" / "test--pipe"
    assert not mirrors.is_dir() or [p.name for p in mirrors.iterdir()] == []


def _mirror_folder(home: Path) -> Path:
    found = [p for p in (home / "bigmodel" / "hub" / "test--pipe").iterdir() if p.name != "refs"]
    assert len(found) == 1, found
    return found[0] / "pipe"


@pytest.mark.parametrize("damage", ["remove_weights", "remove_folder", "truncate_header"])
def test_a_damaged_mirror_is_rebuilt(
    home: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    with serve(monkeypatch, home, test__pipe=PIPE):
        first = run_cli("plan", "test/pipe", "--max-memory", "cpu=1GB", "--json")
        assert first.code == 0, first.stderr
        vae = _mirror_folder(home) / "vae"
        if damage == "remove_weights":
            for p in vae.glob("*.safetensors"):
                p.unlink()
        elif damage == "remove_folder":
            shutil.rmtree(vae)
        else:
            weights = next(vae.glob("*.safetensors"))
            weights.write_bytes(weights.read_bytes()[:100])
        told = run_cli("plan", "test/pipe", "--max-memory", "cpu=1GB")
        assert told.code == 0, told.stderr
        assert "damaged" in told.stdout and "rebuilt" in told.stdout, told.stdout
        again = run_cli("plan", "test/pipe", "--max-memory", "cpu=1GB", "--json")
    assert again.code == 0, again.stderr
    want, got = json.loads(first.stdout), json.loads(again.stdout)
    assert got["device_map"] == want["device_map"] and "vae" in got["device_map"]
    assert got["fingerprint"] == want["fingerprint"]


def test_a_damaged_mirror_offline_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, home, test__pipe=PIPE):
        assert run_cli("inspect", "test/pipe").code == 0
    shutil.rmtree(_mirror_folder(home) / "vae")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_cli("inspect", "test/pipe", "--offline")
    assert_one_line_error(result, 2, "test/pipe", "damaged", "vae")
