"""Shared test tools: the fixtures folder, an in-process CLI runner, real-library checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
BIGMODEL = [sys.executable, "-m", "bigmodel_cli"]

sys.path.insert(0, str(FIXTURES))


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike[str]) -> CliResult:
    """Run ``bigmodel ARGS`` in this process (fast), through the same entry point as the
    console script, and capture both streams."""
    from bigmodel_cli.cli import run_main

    with CliRunner().isolation() as streams:
        code = run_main([str(a) for a in args])
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
    return CliResult(code, out, err)


def run_subprocess(
    *args: str | os.PathLike[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> CliResult:
    """Run ``python -m bigmodel_cli ARGS`` as a real process (exit codes, signals, imports)."""
    proc = subprocess.run(
        [*BIGMODEL, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, code: int, *needles: str) -> None:
    """Exit ``code``, one line on stderr containing every needle, no traceback."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="session")
def diffusers_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion pipeline saved by diffusers' own save_pretrained (unsharded)."""
    return _save_pipeline(tmp_path_factory.mktemp("sd") / "pipe", max_shard_size=None)


@pytest.fixture(scope="session")
def diffusers_pipeline_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same pipeline saved with max_shard_size, so every big component is sharded."""
    return _save_pipeline(tmp_path_factory.mktemp("sd") / "pipe", max_shard_size="300KB")


@pytest.fixture(scope="session")
def llama_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaForCausalLM saved by transformers with max_shard_size."""
    import torch
    from make_fixtures import tiny_llama

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama") / "llama"
    tiny_llama().save_pretrained(path, max_shard_size="100KB")
    return path


def _save_pipeline(path: Path, max_shard_size: str | None) -> Path:
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from make_fixtures import tiny_text_encoder, tiny_unet, tiny_vae
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=CLIPTokenizer.from_pretrained(FIXTURES / "tiny-pipeline" / "tokenizer"),
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, max_shard_size=max_shard_size)
    return path


def make_hf_cache(home: Path, repo_id: str, source: Path) -> Path:
    """A Hugging Face cache under ``home`` holding ``source`` as ``repo_id``, laid out as
    huggingface_hub lays it out: content in ``blobs/<sha256>``, the snapshot's files
    relative symlinks into it, ``refs/main`` naming the snapshot. Returns the snapshot."""
    import hashlib

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for f in sorted(p for p in source.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / f.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot
