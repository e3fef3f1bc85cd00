"""What the libraries answered, kept on disk (:func:`load_kept` / :func:`save_kept`, checked
on read): the traces here, so that planning the same model at the same shape again is
fast, and the names a library builds (:mod:`bigmodel_cli.runtime.kept_names`).

Building a component on the meta device and tracing one forward pass costs seconds, most
of it importing diffusers / transformers and torch. What it finds depends only on the
class, its config, the compute dtype, the input shapes and the versions of the code
involved, so it is kept as a small JSON file under ``$HF_HOME/bigmodel/traces/`` (or
``$BIGMODEL_TRACES``), named
by a hash of all of those (like the Hub's header mirror, immutable per key). A kept file
is checked on read (a regular JSON file, every field of the right type, counts finite and
non-negative): a damaged one is traced again, and the plan says so. One that cannot be
written is not an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bigmodel_cli import __version__
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import MAX_JSON_BYTES, is_count
from bigmodel_cli.formats.json import read_json, write_json_atomically

SCHEMA = 1


def kept_folder(kind: str = "traces") -> Path:
    """``$BIGMODEL_TRACES`` (``$BIGMODEL_NAMES`` for kind ``names``) where set, else
    ``$HF_HOME/bigmodel/<kind>``."""
    given = os.environ.get(f"BIGMODEL_{kind.upper()}")
    if given:
        return Path(given)
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "bigmodel" / kind


def installed_version(package: str) -> str:
    from importlib import metadata  # 15 ms: not at every start-up

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def trace_key(
    library: str, class_name: str, config: Mapping[str, Any], dtype: str, inputs: object
) -> str:
    """The hash naming one trace: everything its result depends on."""
    return kept_key(
        library=[library, installed_version(library)],
        **{"class": class_name, "config": config, "dtype": dtype, "inputs": inputs},
    )


def kept_key(**what: object) -> str:
    """The hash naming one kept result: everything it depends on, with this code's and
    torch's versions."""
    what |= {"schema": SCHEMA, "bigmodel": __version__, "torch": installed_version("torch")}
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_kept(
    kind: str, key: str, problem: Callable[[dict[str, Any]], str | None], limit: int
) -> tuple[dict[str, Any] | None, str | None]:
    """A kept result of ``kind``, or None; and why a kept file was passed over (not a
    regular JSON file within ``limit`` bytes, or ``problem`` found), or None."""
    path = kept_folder(kind) / f"{key}.json"
    if not os.path.lexists(path):
        return None, None
    try:
        found = read_json(path, "file", limit)
    except BigmodelError as exc:
        return None, f"kept {path.name} passed over ({exc.reason})"
    why = problem(found)
    if why is not None:
        return None, f"kept {path.name} passed over ({why})"
    return found, None


def save_kept(kind: str, key: str, doc: Mapping[str, Any]) -> None:
    """Keep a result; a folder that cannot be written is passed over."""
    folder = kept_folder(kind)
    with contextlib.suppress(OSError, BigmodelError):
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomically(folder / f"{key}.json", {"schema": SCHEMA, **doc})


def load_trace(key: str) -> tuple[dict[str, Any] | None, str | None]:
    """A kept trace, or None; and why a kept file was passed over (damaged), or None."""
    found, why = load_kept("traces", key, trace_problem, MAX_JSON_BYTES)
    return found, None if why is None else why.replace("kept ", "kept trace ", 1) + "; traced again"


def trace_problem(doc: Mapping[str, Any]) -> str | None:
    """What is wrong with a kept trace document, or None when every field is as written."""
    if type(doc.get("schema")) is not int or doc["schema"] != SCHEMA:
        return f"schema {str(doc.get('schema'))[:20]!r}, not {SCHEMA}"
    if not _none_or(doc.get("activations"), is_count):
        return f"activations {str(doc.get('activations'))[:40]!r} is not a byte count"
    for field in ("linears", "keep", "order"):
        if not _none_or(doc.get(field), _names):
            return f"{field} is not a list of names"
    inputs = doc.get("inputs")
    if not _none_or(inputs, lambda v: isinstance(v, dict) and all(map(_shape, v.values()))):
        return "inputs is not a map of names to shapes"
    if not _none_or(doc.get("note"), lambda v: isinstance(v, str)):
        return "note is not text"
    return None


def _none_or(value: Any, test: Any) -> bool:
    return value is None or bool(test(value))


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _shape(value: Any) -> bool:
    return isinstance(value, list) and all(is_count(v) for v in value)


def save_trace(key: str, doc: Mapping[str, Any]) -> None:
    """Keep a trace; a cache folder that cannot be written is passed over."""
    save_kept("traces", key, doc)
