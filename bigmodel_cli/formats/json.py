"""JSON for every small file a checkpoint carries (headers, indexes, configs, plans), read
through the one bounded reader (:mod:`.files`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import (
    MAX_JSON_BYTES,
    is_regular_or_absent,
    path_errors,
    read_small_file,
)


def _reject_constant(value: str) -> Any:
    raise ValueError(f"non-finite number {value} in JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json_object(raw: bytes, path: Path, what: str, strict: bool = True) -> dict[str, Any]:
    """JSON: UTF-8, an object at the top, bounded depth; ``strict`` also refuses duplicate
    keys and NaN / Infinity (a library's config may hold them: Python's json writes them)."""
    try:
        text = raw.decode("utf-8")
        value = (
            json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
            if strict
            else json.loads(text)
        )
    except UnicodeDecodeError as exc:
        raise BigmodelError(f"{what} is not valid UTF-8 ({exc.reason})", path) from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BigmodelError(f"{what} is not valid JSON ({reason[:200]})", path) from None
    if not isinstance(value, dict):
        raise BigmodelError(f"{what} is not a JSON object", path)
    return value


def read_json(
    path: Path,
    what: str,
    limit: int = MAX_JSON_BYTES,
    inside: Path | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """A small JSON object file through the bounded reader (:func:`.files.read_small_file`);
    every problem is one :class:`BigmodelError` naming ``path``."""
    return parse_json_object(read_small_file(path, what, limit, inside), path, what, strict)


def read_config(folder: Path, name: str = "config.json") -> dict[str, Any] | None:
    """``folder/config.json`` (or another of a checkpoint's small JSON files), None when
    absent. Present, it must be a regular JSON object file of at most
    :data:`.files.MAX_JSON_BYTES`, not a link leading out of ``folder``: a broken one is
    an error naming it, never read as empty."""
    path = folder / name
    if not os.path.lexists(path):
        return None
    return read_json(path, name, inside=folder, strict=False)


def write_json_atomically(path: Path, doc: object) -> None:
    """A temporary file in the same folder, flushed and renamed over ``path`` once
    complete: readers see the old file or the new one, never half of one."""
    text = json.dumps(doc, indent=2) + "\n"

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file in ``path``'s folder (its name ends with
    ``path``'s suffix, so a writer that goes by the extension picks the same format),
    then renamed over ``path``: readers see the old file or the new one, never half of
    one; the temporary file is removed if ``write`` fails or is interrupted."""
    import contextlib
    import tempfile

    folder = path.parent if str(path.parent) else Path(".")
    with path_errors(path):  # a name too long, a link loop, a file where a folder should be
        if path.is_dir():
            raise BigmodelError("is a folder; give a file name", path)
        if not is_regular_or_absent(path):
            raise BigmodelError("exists and is not a regular file; refusing to replace it", path)
        if not folder.is_dir():
            raise BigmodelError("folder does not exist", folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=folder)
    except OSError as exc:  # a read-only file system, /proc, no permission
        raise BigmodelError(f"cannot write here ({exc.strerror or exc})", path) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise BigmodelError(f"cannot write ({exc.strerror or exc})", path) from None
        raise
