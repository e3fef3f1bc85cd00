"""Strict JSON for every small file a checkpoint carries (headers, indexes, configs, plans)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import BigmodelError


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-finite number {value} in JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json_object(raw: bytes, path: Path, what: str) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, no NaN, bounded depth."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise BigmodelError(f"{what} is not valid UTF-8 ({exc.reason})", path) from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BigmodelError(f"{what} is not valid JSON ({reason[:200]})", path) from None
    if not isinstance(value, dict):
        raise BigmodelError(f"{what} is not a JSON object", path)
    return value


def read_json_file(path: Path) -> dict[str, object] | None:
    """A small JSON file (config.json) or None when absent or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomically(path: Path, doc: object) -> None:
    """A temporary file in the same folder, flushed and renamed over ``path`` once
    complete: readers see the old file or the new one, never half of one."""
    import contextlib
    import os
    import tempfile

    text = json.dumps(doc, indent=2) + "\n"
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BigmodelError("is a folder; give a file name", path)
    if not folder.is_dir():
        raise BigmodelError("folder does not exist", folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
