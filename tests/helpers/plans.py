"""Plans for tests: plan documents written by hand (as ``bigmodel plan -o`` would write
them, for ``bigmodel run``), the real libraries' own placement answers (diffusers'
balanced map, accelerate's ``infer_auto_device_map``), and device-map checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bigmodel_cli.checkpoint import fingerprint, load_checkpoint
from bigmodel_cli.devices import DeviceKey
from bigmodel_cli.placement.items import Assignment, Bin, Part
from bigmodel_cli.placement.units import build_units
from bigmodel_cli.sizes import DTYPES, bytes_at, parse_dtype

GB = 10**9

# ---------------------------------------------------------------- plan files by hand


def hand_plan(
    source: Path,
    device_map: dict[str, DeviceKey],
    component_maps: dict[str, dict[str, DeviceKey]] | None = None,
    dtype: str | None = None,
    strategy: str = "balanced",
    variant: str | None = None,
) -> dict[str, Any]:
    """A version-1 plan document for ``source`` placing its components by ``device_map``
    (and split ones by ``component_maps``): planned bytes per device from the headers."""
    ckpt = load_checkpoint(source, variant)
    target = parse_dtype(dtype) if dtype else None
    planned: dict[str, int] = {}
    components = {}
    for c in ckpt.components:
        total = 0
        for t in c.tensors:
            where = device_map[c.name]
            if where == "split":
                where = device_of(t.name, (component_maps or {})[c.name])
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


def write_plan(path: Path, doc: dict[str, Any]) -> Path:
    """Write a plan document to ``path`` as JSON; returns ``path``."""
    path.write_text(json.dumps(doc, indent=2))
    return path


# ---------------------------------------------------------------- the libraries' answers


def diffusers_balanced(sizes: Mapping[str, int], gpus: Mapping[int, int]) -> dict[str, DeviceKey]:
    """diffusers' own ``_assign_components_to_devices``, fed as ``_get_final_device_map``
    feeds it: components by size descending, GPUs by free memory descending (stable)."""
    from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices

    module_sizes = dict(sorted(sizes.items(), key=lambda item: item[1], reverse=True))
    max_memory: dict[Any, float] = dict(sorted(gpus.items(), key=lambda i: i[1], reverse=True))
    mapping = _assign_components_to_devices(dict(module_sizes), max_memory, "balanced")
    return {c: device for device, components in mapping.items() for c in components}


def accelerate_map(model: Any, max_memory: Mapping[DeviceKey, int], dtype: Any) -> dict[str, Any]:
    """accelerate's ``infer_auto_device_map`` with the model's own no-split classes, as
    ``from_pretrained(device_map="auto")`` calls it."""
    from accelerate import infer_auto_device_map

    return dict(
        infer_auto_device_map(
            model,
            max_memory=dict(max_memory),
            no_split_module_classes=list(getattr(model, "_no_split_modules", None) or []),
            dtype=dtype,
        )
    )


# ---------------------------------------------------------------- the planner's items


def bins(gpus: Mapping[int, int], cpu: int | None = None) -> list[Bin]:
    return [*(Bin(k, v) for k, v in sorted(gpus.items())), Bin("cpu", cpu)]


def parts(sizes: Mapping[str, int]) -> list[Part]:
    return [Part(name, n) for name, n in sizes.items()]


def auto_part(name: str, sizes: Mapping[str, int], config: Mapping[str, Any] | None) -> Part:
    units = build_units(list(sizes.items()), config)
    return Part(name, sum(sizes.values()), units)


def on_gpus(assignment: Assignment) -> dict[str, DeviceKey]:
    return {p.name: p.device for p in assignment.placements if isinstance(p.device, int)}


# ---------------------------------------------------------------- device maps


def keys_for(name: str, device_map: Mapping[str, Any]) -> list[str]:
    """Every key of ``device_map`` that covers tensor ``name`` (a dotted prefix or itself)."""
    return [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]


def device_of(name: str, device_map: Mapping[str, Any]) -> Any:
    """The device of tensor ``name``: that of its longest covering key."""
    return device_map[max(keys_for(name, device_map), key=len)]


def bytes_by_device(sizes: Mapping[str, int], device_map: Mapping[str, Any]) -> dict[Any, int]:
    found: dict[Any, int] = {}
    for name, n in sizes.items():
        where = device_of(name, device_map)
        found[where] = found.get(where, 0) + n
    return found


def off_gpu(sizes: Mapping[str, int], device_map: Mapping[str, Any]) -> int:
    by_device = bytes_by_device(sizes, device_map)
    return sum(n for d, n in by_device.items() if not isinstance(d, int))
