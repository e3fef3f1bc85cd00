"""Helpers for `bigmodel run` tests: plan files written by hand, as `bigmodel plan -o` would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bigmodel_cli.checkpoint import fingerprint, load_checkpoint
from bigmodel_cli.sizes import DTYPES, bytes_at, parse_dtype

Where = int | str


def _device_of(name: str, module_map: dict[str, Where]) -> Where:
    best = max((p for p in module_map if p == "" or name == p or name.startswith(p + ".")), key=len)
    return module_map[best]


def make_plan(
    source: Path,
    device_map: dict[str, Where],
    component_maps: dict[str, dict[str, Where]] | None = None,
    dtype: str | None = None,
    strategy: str = "balanced",
    variant: str | None = None,
) -> dict[str, Any]:
    """A version-1 plan dict for ``source``: planned bytes per device from the headers."""
    ckpt = load_checkpoint(source, variant)
    target = parse_dtype(dtype) if dtype else None
    planned: dict[str, int] = {}
    components = {}
    for c in ckpt.components:
        total = 0
        for t in c.tensors:
            where = device_map[c.name]
            if where == "split":
                where = _device_of(t.name, (component_maps or {})[c.name])
            size = bytes_at(DTYPES[t.dtype], t.numel, target)
            planned[str(where)] = planned.get(str(where), 0) + size
            total += size
        components[c.name] = {"bytes": total}
    return {
        "version": 1,
        "source": str(Path(source).resolve()),
        "fingerprint": fingerprint(ckpt),
        "strategy": strategy,
        "dtype": target.name if target else None,
        "variant": variant,
        "devices": {k: {"capacity": 10**12, "planned": v} for k, v in planned.items()},
        "device_map": device_map,
        "component_maps": component_maps or {},
        "offloaded": [],
        "fits": all(str(v).isdigit() for v in device_map.values()),
        "components": components,
        "execution_device": None,
        "peak_gpu": None,
        "held_for_offload": 0,
    }


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(json.dumps(plan, indent=2))
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, offset: int) -> None:
    """Invert every bit of one byte of ``path``, in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        (value,) = f.read(1)
        f.seek(offset)
        f.write(bytes([value ^ 0xFF]))
