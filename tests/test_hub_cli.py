"""``inspect``, ``plan`` and ``run`` of a Hub repo id, against a local stand-in of the Hub.

Remote ``inspect --json`` and ``plan --json`` must equal the same commands on the
downloaded snapshot (apart from ``source``), and ``run`` after a remote ``plan`` must
download only the files its plan uses, then pass ``--verify``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.hub_env import serve
from tests.helpers.hub_server import HubServer

PIPE = FIXTURES / "tiny-pipeline"


@pytest.fixture(scope="module")
def variant_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers UNet folder with fp32 weights and an fp16 variant (real tensors)."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("variant") / "unet"
    root.mkdir()
    torch.manual_seed(0)
    tensors = {f"down_blocks.{i}.weight": torch.randn(16, 16) for i in range(3)}
    save_file(tensors, root / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    half = {k: v.half() for k, v in tensors.items()}
    save_file(half, root / "diffusion_pytorch_model.fp16.safetensors", {"format": "pt"})
    (root / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    return root


@pytest.fixture
def repos(
    monkeypatch: pytest.MonkeyPatch, home: Path, llama_sharded: Path, variant_repo: Path
) -> Iterator[HubServer]:
    with serve(
        monkeypatch, home, test__pipe=PIPE, test__llama=llama_sharded, test__unet=variant_repo
    ) as hub:
        yield hub


CASES = [
    ("test/pipe", [], ["--max-memory", "0=2MB,1=2MB,cpu=1GB", "--strategy", "auto"]),
    ("test/llama", [], ["--max-memory", "0=150KB,1=150KB,cpu=1GB", "--strategy", "auto"]),
    ("test/unet", ["--variant", "fp16"], ["--max-memory", "0=1MB,cpu=1GB"]),
]


def _json(*args: str) -> dict[str, Any]:
    result = run_cli(*args, "--json")
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    doc.pop("source")
    return doc


def _repo_path(url_path: str, repo: str) -> str:
    """``/test/pipe/resolve/<rev>/unet/x`` or ``/cdn/test/pipe/unet/x`` -> ``unet/x``."""
    rel = url_path.split(repo + "/", 1)[1]
    return rel.split("/", 2)[2] if rel.startswith("resolve/") else rel


def _download(repo: str) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo)


@pytest.mark.parametrize(("repo", "variant", "budget"), CASES)
def test_remote_inspect_and_plan_equal_the_downloaded_snapshot(
    repos: HubServer, repo: str, variant: list[str], budget: list[str]
) -> None:
    remote_inspect = _json("inspect", repo, *variant)
    remote_plan = _json("plan", repo, *variant, *budget)
    files = {p: n for p, n in repos.bytes_sent.items() if p.endswith(".safetensors")}
    assert files and all(0 < n <= 65536 for n in files.values())  # one range per header

    _download(repo)
    repos.reset_counts()
    assert _json("inspect", repo, *variant) == remote_inspect
    assert _json("plan", repo, *variant, *budget) == remote_plan
    assert not any(p.endswith(".safetensors") for p in repos.bytes_sent)  # from the cache


@pytest.mark.parametrize(("repo", "variant", "budget"), CASES)
def test_run_after_a_remote_plan_downloads_only_the_plans_files(
    repos: HubServer, tmp_path: Path, repo: str, variant: list[str], budget: list[str]
) -> None:
    plan = tmp_path / "plan.json"
    made = run_cli("plan", repo, *variant, "--max-memory", "cpu=1GB", "-o", plan)
    assert made.code == 0, made.stderr
    doc = json.loads(plan.read_text())
    assert doc["source"].startswith(repo + "@") and len(doc["source"].split("@")[1]) == 40
    repos.reset_counts()

    result = run_cli("run", repo, "--plan", plan, "--verify", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True
    fetched = {p for p, n in repos.bytes_sent.items() if p.endswith(".safetensors") and n}
    from bigmodel_cli.checkpoint import load_checkpoint

    commit = doc["source"].split("@")[1]
    ckpt = load_checkpoint(repo, variant[1] if variant else None, revision=commit, remote=False)
    used = {str(f.relative_to(ckpt.root)) for c in ckpt.components for f in c.files}
    assert {_repo_path(p, repo) for p in fetched} == used
    if variant:
        assert all(".fp16." in name for name in used)


def test_second_plan_of_a_revision_fetches_no_header(repos: HubServer) -> None:
    assert run_cli("plan", "test/pipe", "--max-memory", "cpu=1GB").code == 0
    repos.reset_counts()
    result = run_cli("plan", "test/pipe", "--max-memory", "cpu=1GB")
    assert result.code == 0
    assert not any(p.endswith(".safetensors") for p in repos.bytes_sent)
    assert "headers cached earlier from the Hub" in result.stdout


def test_human_output_says_where_the_figures_came_from(repos: HubServer) -> None:
    result = run_cli("inspect", "test/pipe")
    assert result.code == 0, result.stderr
    assert "headers" in result.stdout and "from the Hub at" in result.stdout


def test_offline_plan_of_an_unseen_repo_says_what_is_missing(
    repos: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_cli("plan", "test/llama", "--offline", "--max-memory", "cpu=1GB")
    assert_one_line_error(result, 2, "offline")
    assert not repos.requests


def test_bin_only_repo_is_refused_without_download(
    monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path
) -> None:
    import torch

    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save({"w": torch.zeros(4)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    with serve(monkeypatch, home, test__legacy=folder) as hub:
        result = run_cli("inspect", "test/legacy")
        assert_one_line_error(result, 2, ".bin")
        assert not any(p.endswith(".bin") and n > 0 for p, n in hub.bytes_sent.items())


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("gated", "hf auth login"),
        ("ignore_range", "ignored the Range"),
        ("stall", "no answer"),
        ("drop", "dropped"),
    ],
)
def test_server_faults_are_one_line_exit_2_and_leave_nothing(
    repos: HubServer, home: Path, fault: str, needle: str
) -> None:
    import time

    repos.fault, repos.stall_seconds = fault, 4
    began = time.monotonic()
    result = run_cli("plan", "test/llama", "--max-memory", "cpu=1GB")
    assert time.monotonic() - began < 15
    assert_one_line_error(result, 2, needle)
    mirror = home / "bigmodel" / "hub" / "test--llama"
    assert not mirror.is_dir() or all(p.name == "refs" for p in mirror.iterdir())


def test_missing_repo_is_one_line_exit_2(repos: HubServer) -> None:
    assert_one_line_error(run_cli("inspect", "test/nothing"), 2, "not found")


def test_shard_of_a_repo_not_in_the_cache_is_refused_not_filled_with_zeros(
    repos: HubServer, tmp_path: Path
) -> None:
    # the header mirror that inspect and plan read holds no tensor bytes (sparse files)
    result = run_cli("shard", "test/llama", "-o", tmp_path / "out", "--max-shard-size", "1MB")
    assert_one_line_error(result, 2, "not in the Hugging Face cache", "hf download test/llama")
    assert not (tmp_path / "out").exists()
