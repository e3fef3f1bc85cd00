"""Fixtures shared by the test modules; the helpers they use live in :mod:`tests.helpers`."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers.checkpoints import save_pipeline, tiny_llama


@pytest.fixture(scope="session")
def diffusers_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion pipeline saved by diffusers' own save_pretrained (unsharded)."""
    return save_pipeline(tmp_path_factory.mktemp("sd") / "pipe", max_shard_size=None)


@pytest.fixture(scope="session")
def diffusers_pipeline_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same pipeline saved with max_shard_size, so every big component is sharded."""
    return save_pipeline(tmp_path_factory.mktemp("sd") / "pipe", max_shard_size="300KB")


@pytest.fixture(scope="session")
def llama_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaForCausalLM saved by transformers with max_shard_size."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama") / "llama"
    tiny_llama().save_pretrained(path, max_shard_size="100KB")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME for a test against the Hub stand-in, with a 2 s network timeout."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
    return tmp_path / "hf"


@pytest.fixture(autouse=True)
def _own_trace_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test keeps its activation traces and built names apart (never in the user's
    cache), so a test that expects a trace gets one, not an earlier test's result."""
    monkeypatch.setenv("BIGMODEL_TRACES", str(tmp_path / "traces"))
    monkeypatch.setenv("BIGMODEL_NAMES", str(tmp_path / "names"))


def pytest_configure(config: pytest.Config) -> None:
    """A shell's background job (`make test &`, `nohup ... &`) starts with SIGINT ignored,
    and so would every process a test starts: the tests that interrupt a run with SIGINT
    need it delivered. Python's own handler here makes the children start with the default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
