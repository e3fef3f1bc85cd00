"""Start-up of ``inspect`` / ``plan`` of a Hub repo: only what they use is imported, and
a plan that looks for the GPUs reads the Hub meanwhile, once, on its own thread."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tests.helpers import FIXTURES
from tests.helpers.cli import run_cli, run_counting_imports
from tests.helpers.hub_env import serve
from tests.helpers.hub_server import HubServer

PIPE = FIXTURES / "tiny-pipeline"
# what a remote weights-only plan never needs: torch, the tables (--json), and the parts
# of huggingface_hub that are not its HTTP client (HfApi, file_download, snapshot_download)
NOT_IMPORTED = (
    "torch",
    "rich",
    "accelerate",
    "safetensors",
    "huggingface_hub.hf_api",
    "huggingface_hub.file_download",
    "huggingface_hub._snapshot_download",
)


@pytest.mark.parametrize("command", [["inspect"], ["plan", "--max-memory", "0=1MB,cpu=1GB"]])
def test_a_remote_read_imports_only_what_it_uses(tmp_path: Path, command: list[str]) -> None:
    with HubServer({"test/pipe": PIPE}) as hub:
        env = os.environ | {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        env.pop("HF_HUB_OFFLINE", None)
        result, imported = run_counting_imports(
            command[0], "test/pipe", *command[1:], "--json", env=env
        )
        assert result.code == 0, result.stderr[-2000:]
        assert json.loads(result.stdout)["source"].startswith("test/pipe@")
        assert any(r.path.endswith(".safetensors") for r in hub.requests)  # read remotely
    assert "bigmodel_cli.checkpoint.hub" in imported  # the list saw this run's imports
    assert sorted(imported & set(NOT_IMPORTED)) == []


def test_the_mirror_is_read_once_ahead_on_its_own_thread(
    monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    from bigmodel_cli.checkpoint import hub as hub_module

    listed_on: list[str] = []
    list_files = hub_module._list_files

    def recording(repo_id: str, revision: str) -> tuple[str, dict[str, int]]:
        listed_on.append(threading.current_thread().name)
        return list_files(repo_id, revision)

    monkeypatch.setattr(hub_module, "_list_files", recording)
    with serve(monkeypatch, home, test__pipe=PIPE) as hub:
        # no --max-memory: the GPUs are looked for (torch) while the thread reads the Hub
        result = run_cli("plan", "test/pipe", "--json")
        assert result.code == 0, result.stderr
        assert listed_on == ["bigmodel-hub"]
        assert [r.path for r in hub.requests if r.path.startswith("/api/models/")] == [
            "/api/models/test/pipe/revision/main"
        ]
        assert json.loads(result.stdout)["source"].startswith("test/pipe@")

        from huggingface_hub import snapshot_download

        snapshot_download("test/pipe")  # in the Hugging Face cache now: nothing is asked
        hub.reset_counts()
        assert run_cli("plan", "test/pipe", "--json").code == 0
        assert listed_on == ["bigmodel-hub"]
        assert [r.path for r in hub.requests if "test/pipe" in r.path] == []


def test_an_early_error_leaves_no_half_built_mirror(
    monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    with serve(monkeypatch, home, test__pipe=PIPE) as hub:
        hub.latency = 0.2  # the mirror takes a second; the bad flag is found at once
        result = run_cli("plan", "test/pipe", "--reserve", "lots")
        assert result.code == 2 and "--reserve" in result.stderr
        root = home / "bigmodel" / "hub" / "test--pipe"
        assert root.is_dir() and not [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_an_error_met_ahead_is_the_commands_one_line(
    monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    with serve(monkeypatch, home, test__pipe=PIPE):
        result = run_cli("plan", "test/absent")
    assert result.code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "repository test/absent not found" in result.stderr
