"""Hugging Face sharded-checkpoint index files (``*.safetensors.index.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import MAX_INDEX_BYTES, safe_path
from bigmodel_cli.formats.json import read_json


@dataclass(frozen=True)
class Index:
    """A parsed index: which file holds each tensor, and the declared total size."""

    path: Path
    weight_map: dict[str, str]
    total_size: int | None
    metadata: dict[str, Any]

    @property
    def files(self) -> list[str]:
        """Shard file names in first-use order, each once."""
        return list(dict.fromkeys(self.weight_map.values()))


def safe_member(folder: Path, name: str, named_in: Path, what: str = "shard") -> Path:
    """``folder/name`` for a plain file name; anything that could leave ``folder`` is
    refused (``what`` names it in the error, ``named_in`` is the file that named it)."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BigmodelError(
            f"{what} name {name!r} is not a plain file name in the same folder", named_in
        )
    return safe_path(folder, name, named_in, what)


def read_index(path: Path) -> Index:
    """Parse and check the shape of an index file; shard names are checked to be plain."""
    obj = read_json(path, "index", MAX_INDEX_BYTES, inside=path.parent)
    weight_map = obj.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise BigmodelError("index has no weight_map of tensor name -> file name", path)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BigmodelError("index metadata is not an object", path)
    total = metadata.get("total_size")
    if total is not None and (
        isinstance(total, bool) or not isinstance(total, int | float) or total < 0
    ):
        raise BigmodelError(f"index total_size {total!r} is not a byte count", path)
    for name in set(weight_map.values()):
        safe_member(path.parent, name, path)
    return Index(path, dict(weight_map), None if total is None else int(total), metadata)


def index_json(
    weight_map: dict[str, str], total_size: int, extra: dict[str, Any] | None = None
) -> str:
    """An index as Hugging Face writes it: keys sorted, 2-space indent, trailing newline."""
    metadata = dict(extra or {}) | {"total_size": total_size}
    doc = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
