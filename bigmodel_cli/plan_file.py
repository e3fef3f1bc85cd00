"""Read a plan file (``bigmodel plan -o plan.json``, schema version 1) into a :class:`Plan`.

Only the keys ``bigmodel run`` needs are checked and kept; device names are brought to one
spelling: a GPU is its index as a string (``"0"``), otherwise ``"cpu"`` or ``"disk"``.
Nothing here imports torch or the planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.safetensors import parse_json_object
from bigmodel_cli.sizes import DType, parse_dtype

PLAN_VERSION = 1
MAX_PLAN_BYTES = 100_000_000
REQUIRED = ("version", "source", "fingerprint", "devices", "device_map")
STRATEGY_NAMES = ("balanced", "auto", "sequential")


@dataclass(frozen=True)
class PlanDevice:
    capacity: int | None
    planned: int


@dataclass(frozen=True)
class Plan:
    """A checked plan. ``device_map`` values are device ids or ``"split"``."""

    path: Path
    source: str
    fingerprint: str
    strategy: str
    dtype: DType | None
    variant: str | None
    devices: dict[str, PlanDevice]
    device_map: dict[str, str]
    component_maps: dict[str, dict[str, str]]
    execution_device: str | None

    def named_devices(self) -> set[str]:
        """Every device id the plan mentions anywhere."""
        ids = set(self.devices) | {d for d in self.device_map.values() if d != "split"}
        for module_map in self.component_maps.values():
            ids.update(module_map.values())
        if self.execution_device is not None:
            ids.add(self.execution_device)
        return ids

    def plan_value(self, component: str) -> int | str:
        """The component's device as ``hf_device_map`` writes it: 0, "cpu", "disk", "split"."""
        where = self.device_map[component]
        return int(where) if where.isdigit() else where


def save_plan(doc: dict[str, Any], path: Path) -> None:
    """Write a plan document to ``path`` atomically. An existing file is replaced only when
    it is an earlier plan: never a shard, a config, or anything else of the user's."""
    import json

    from bigmodel_cli.atomic import write_text_atomically

    if path.is_dir():
        raise BigmodelError("is a folder; -o wants a file name such as plan.json", path)
    if path.is_symlink() or (path.exists() and not _is_plan(path)):
        raise BigmodelError(
            "exists and is not a bigmodel plan; refusing to overwrite it (choose another -o)", path
        )
    write_text_atomically(path, json.dumps(doc, indent=2) + "\n")


def _is_plan(path: Path) -> bool:
    try:
        read_plan(path)
    except BigmodelError:
        return False
    return True


def torch_device(dev: str) -> str:
    """Device id -> torch's name: ``"0"`` -> ``"cuda:0"``; cpu and disk stay."""
    return f"cuda:{dev}" if dev.isdigit() else dev


def device_id(value: object, path: Path) -> str:
    """``0`` / ``"0"`` / ``"cuda:0"`` -> ``"0"``; ``"cpu"``; ``"disk"``; others are refused."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("cpu", "disk"):
            return text
        text = "0" if text == "cuda" else text.removeprefix("cuda:")
        if text.isdigit():
            return str(int(text))
    raise BigmodelError(
        f"plan names an unknown device {value!r} (expected a GPU index, cpu or disk)", path
    )


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _devices(raw: Any, path: Path) -> dict[str, PlanDevice]:
    if not isinstance(raw, dict):
        raise BigmodelError("plan 'devices' is not an object", path)
    devices = {}
    for key, entry in raw.items():
        entry = entry if isinstance(entry, dict) else {}
        planned, capacity = entry.get("planned"), entry.get("capacity")
        if not _int(planned) or not (capacity is None or _int(capacity)):
            raise BigmodelError(
                f"plan device {key!r} needs integer 'planned' and 'capacity' byte counts", path
            )
        devices[device_id(key, path)] = PlanDevice(capacity, planned)
    return devices


def _device_map(raw: Any, path: Path) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        raise BigmodelError("plan 'device_map' is not an object of component -> device", path)
    return {name: "split" if v == "split" else device_id(v, path) for name, v in raw.items()}


def _component_maps(raw: Any, split: list[str], path: Path) -> dict[str, dict[str, str]]:
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict) or not all(isinstance(m, dict) for m in raw.values()):
        raise BigmodelError("plan 'component_maps' is not an object of module maps", path)
    lacking = [name for name in split if name not in raw]
    if lacking:
        raise BigmodelError(f"plan splits {lacking[0]!r} but has no component_maps entry", path)
    return {
        name: {prefix: device_id(v, path) for prefix, v in module_map.items()}
        for name, module_map in raw.items()
    }


def _optional_str(doc: dict[str, Any], key: str, path: Path) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise BigmodelError(f"plan {key!r} is not a string", path)
    return value


def read_plan(path: Path) -> Plan:
    """Parse and check ``path``; every problem is a :class:`BigmodelError` naming the file."""
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise BigmodelError(f"plan file is larger than {MAX_PLAN_BYTES} bytes", path)
        raw = path.read_bytes()
    except OSError as exc:
        raise BigmodelError(f"cannot read plan ({exc.strerror or exc})", path) from None
    doc = parse_json_object(raw, path, "plan")
    lacking = [key for key in REQUIRED if key not in doc]
    if lacking:
        raise BigmodelError(
            f"not a bigmodel plan: missing {', '.join(map(repr, lacking))} "
            "(write one with bigmodel plan -o)",
            path,
        )
    if doc["version"] != PLAN_VERSION:
        raise BigmodelError(
            f"plan version {doc['version']!r} is not supported (this bigmodel reads "
            f"version {PLAN_VERSION}); re-run bigmodel plan",
            path,
        )
    for key in ("source", "fingerprint"):
        if not isinstance(doc[key], str):
            raise BigmodelError(f"plan {key!r} is not a string", path)
    dtype_name = _optional_str(doc, "dtype", path)
    try:
        dtype = parse_dtype(dtype_name) if dtype_name else None
    except BigmodelError as exc:
        raise BigmodelError(f"plan dtype: {exc.reason}", path) from None
    strategy = _optional_str(doc, "strategy", path) or "balanced"
    if strategy not in STRATEGY_NAMES:
        raise BigmodelError(f"plan strategy {strategy!r} is unknown", path)
    devices = _devices(doc["devices"], path)
    device_map = _device_map(doc["device_map"], path)
    for name, where in device_map.items():
        if where != "split" and where not in devices:
            raise BigmodelError(f"plan puts {name!r} on {where!r}, not one of its devices", path)
    split = [name for name, where in device_map.items() if where == "split"]
    execution = doc.get("execution_device")
    return Plan(
        path=path,
        source=doc["source"],
        fingerprint=doc["fingerprint"],
        strategy=strategy,
        dtype=dtype,
        variant=_optional_str(doc, "variant", path),
        devices=devices,
        device_map=device_map,
        component_maps=_component_maps(doc.get("component_maps"), split, path),
        execution_device=None if execution is None else device_id(execution, path),
    )
