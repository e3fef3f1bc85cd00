"""Traces kept on disk, so that planning the same model at the same shape again is fast.

Building a component on the meta device and tracing one forward pass costs seconds, most
of it importing diffusers / transformers and torch. What it finds depends only on the
class, its config, the compute dtype, the input shapes and the versions of the code
involved, so it is kept as a small JSON file under ``$HF_HOME/bigmodel/traces/`` (or
``$BIGMODEL_TRACES``), named
by a hash of all of those (like the Hub's header mirror, immutable per key). A file that
cannot be read is ignored; one that cannot be written is not an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bigmodel_cli import __version__
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.json import read_json_file, write_json_atomically

SCHEMA = 1


def _folder() -> Path:
    """``$BIGMODEL_TRACES`` where set, else ``$HF_HOME/bigmodel/traces``."""
    if os.environ.get("BIGMODEL_TRACES"):
        return Path(os.environ["BIGMODEL_TRACES"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "bigmodel" / "traces"


def _version(package: str) -> str:
    from importlib import metadata  # 15 ms: not at every start-up

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def trace_key(
    library: str, class_name: str, config: Mapping[str, Any], dtype: str, inputs: object
) -> str:
    """The hash naming one trace: everything its result depends on."""
    what = {
        "schema": SCHEMA,
        "bigmodel": __version__,
        "torch": _version("torch"),
        "library": [library, _version(library)],
        "class": class_name,
        "config": config,
        "dtype": dtype,
        "inputs": inputs,
    }
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_trace(key: str) -> dict[str, Any] | None:
    """A kept trace, or None."""
    found = read_json_file(_folder() / f"{key}.json")
    return found if found is not None and found.get("schema") == SCHEMA else None


def save_trace(key: str, doc: Mapping[str, Any]) -> None:
    """Keep a trace; a cache folder that cannot be written is passed over."""
    folder = _folder()
    with contextlib.suppress(OSError, BigmodelError):
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomically(folder / f"{key}.json", {"schema": SCHEMA, **doc})
