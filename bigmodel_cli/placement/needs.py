"""What a plan says of the run besides weights, both ways between records and JSON: the
top-level ``runtime`` (the run's shape, a :class:`~bigmodel_cli.runtime.shape.RunShape`)
and, per component, ``activations``, ``kv_cache`` (and its ``kv_dtype``), ``inputs`` (the
shapes the estimate assumed) and a note when there is no estimate. Plans without these keys
(written before them) read as weights-only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import is_count
from bigmodel_cli.runtime.kv import AUTO, KV_DTYPES
from bigmodel_cli.runtime.shape import RunShape


def run_json(run: RunShape) -> dict[str, Any]:
    """The plan's top-level ``runtime``: the run's shape (defaults filled in)."""
    return {
        "counted": run.counted,
        "batch": run.batch,
        "height": run.height,
        "width": run.width,
        "frames": run.frames,
        "context": run.context,
        "quantize": dict(run.quantize),
        "kv_dtype": run.kv_dtype,
        "encoder_length": run.encoder_length,
    }


@dataclass(frozen=True)
class Needs:
    """One component's run-time needs (None: not estimated)."""

    activations: int | None = None
    kv_cache: int | None = None
    inputs: Mapping[str, tuple[int, ...]] | None = None
    note: str | None = None
    kv_dtype: str | None = None  # the KV cache's dtype, where there is one

    def to_json(self) -> dict[str, Any]:
        inputs = None if self.inputs is None else {k: list(v) for k, v in self.inputs.items()}
        doc: dict[str, Any] = {
            "activations": self.activations,
            "kv_cache": self.kv_cache,
            "inputs": inputs,
        }
        if self.kv_dtype is not None:
            doc["kv_dtype"] = self.kv_dtype
        if self.note is not None:
            doc["note"] = self.note
        return doc


def _optional_count(doc: Mapping[str, Any], key: str, where: str, path: Any) -> int | None:
    value = doc.get(key)
    if value is not None and not is_count(value):
        raise BigmodelError(f"plan {where} {key!r} is not a byte count or null", path)
    return value


def run_from_json(raw: Any, path: Any) -> RunShape:
    if raw is None:
        return RunShape()
    if not isinstance(raw, dict):
        raise BigmodelError("plan 'runtime' is not an object", path)
    height, width, frames, context, encoder_length = (
        _optional_count(raw, k, "runtime", path) or None
        for k in ("height", "width", "frames", "context", "encoder_length")
    )
    kv_dtype = raw.get("kv_dtype", AUTO)
    if kv_dtype not in KV_DTYPES:
        raise BigmodelError(f"plan runtime 'kv_dtype' is not one of {', '.join(KV_DTYPES)}", path)
    quantize = raw.get("quantize") or {}
    if not isinstance(quantize, dict) or not all(isinstance(v, str) for v in quantize.values()):
        raise BigmodelError("plan runtime 'quantize' is not an object of component -> method", path)
    batch = raw.get("batch", 1)
    return RunShape(
        counted=bool(raw.get("counted", False)),
        batch=batch if is_count(batch) and batch > 0 else 1,
        height=height,
        width=width,
        frames=frames,
        context=context,
        quantize=dict(quantize),
        kv_dtype=kv_dtype,
        encoder_length=encoder_length,
    )


def needs_from_json(name: str, entry: Mapping[str, Any], path: Any) -> Needs | None:
    """A component entry's needs; None when it has none of the keys (an older plan)."""
    if not any(k in entry for k in ("activations", "kv_cache", "inputs")):
        return None
    where = f"component {name!r}"
    inputs = entry.get("inputs")
    if inputs is not None and not (
        isinstance(inputs, dict)
        and all(isinstance(s, list) and all(is_count(d) for d in s) for s in inputs.values())
    ):
        raise BigmodelError(f"plan {where} 'inputs' is not an object of name -> shape", path)
    note = entry.get("note")
    return Needs(
        activations=_optional_count(entry, "activations", where, path),
        kv_cache=_optional_count(entry, "kv_cache", where, path),
        inputs=None if inputs is None else {k: tuple(v) for k, v in inputs.items()},
        note=note if isinstance(note, str) else None,
        kv_dtype=entry.get("kv_dtype") if isinstance(entry.get("kv_dtype"), str) else None,
    )
