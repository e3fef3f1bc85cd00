"""A diffusers pipeline's ``model_index.json``: its ``name: [library, class]`` entries.

Read and parsed here only, for the local reader, the Hub mirror, tracing and ``load()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bigmodel_cli.formats.json import read_json

MODEL_INDEX = "model_index.json"

Entry = tuple[str | None, str | None]  # (library, class); None where not a string


def read_model_index(root: Path) -> dict[str, Any]:
    """``root/model_index.json``, strict JSON through the bounded reader."""
    return read_json(root / MODEL_INDEX, MODEL_INDEX, inside=root)


def pipeline_entries(doc: Mapping[str, Any]) -> dict[str, Entry]:
    """The component entries, ``name: (library, class)``: every key not starting with
    ``_`` whose value is a two-item list (``[null, null]`` included); ``_class_name``,
    ``_diffusers_version`` and the like left out."""
    return {
        name: (_text(value[0]), _text(value[1]))
        for name, value in doc.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2
    }


def library_of(entry: Entry) -> tuple[str, str] | None:
    """``(library, class)`` when both are named."""
    library, cls = entry
    return (library, cls) if library is not None and cls is not None else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
