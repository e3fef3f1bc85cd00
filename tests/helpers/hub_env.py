"""Point huggingface_hub at a :class:`HubServer` for one test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.hub_server import HubServer


def hub_env(monkeypatch: Any, hub: HubServer, home: Path) -> None:
    """Point huggingface_hub at ``hub`` with its cache in ``home`` (env and the constants
    it read at import)."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(c, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(c, "HF_HOME", str(home))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)


@contextmanager
def serve(monkeypatch: Any, home: Path, **repos: Path) -> Iterator[HubServer]:
    """A stand-in serving ``repos`` (``test__name`` -> ``test/name``), huggingface_hub
    pointed at it."""
    with HubServer({k.replace("__", "/"): v for k, v in repos.items()}) as hub:
        hub_env(monkeypatch, hub, home)
        yield hub
