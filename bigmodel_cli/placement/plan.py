"""The plan: one type, and its JSON document (schema version 1) in both directions.

``bigmodel plan`` builds a :class:`Plan` and writes it with :meth:`Plan.save`;
``bigmodel run`` reads it back with :func:`read_plan`, which checks every key it uses and
brings device names to one spelling (:func:`bigmodel_cli.devices.parse_device`: a GPU is
its index, otherwise ``"cpu"`` or ``"disk"``). Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bigmodel_cli import arguments as a
from bigmodel_cli.devices import Device, DeviceKey, is_gpu, key_text, parse_device
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import MAX_PLAN_BYTES, is_count, path_errors
from bigmodel_cli.formats.json import read_json, write_json_atomically
from bigmodel_cli.placement.items import SPLIT
from bigmodel_cli.placement.needs import Needs, needs_from_json, run_from_json, run_json
from bigmodel_cli.placement.strategies import DEFAULT_STRATEGY, STRATEGIES
from bigmodel_cli.placement.world import WorldPlan, world_from_json
from bigmodel_cli.runtime.shape import RunShape
from bigmodel_cli.sizes import DType, parse_dtype

PLAN_VERSION = 1
REQUIRED = ("version", "source", "fingerprint", "devices", "device_map")

Where = DeviceKey  # a GPU index, "cpu", "disk", or SPLIT in a device_map


@dataclass(frozen=True)
class DevicePlan(Device):
    """A device of the plan (its budget and reserve) and what is planned on it."""

    planned: int = 0
    held: int = 0  # kept free for offloaded blocks run here (auto)
    weights: int | None = None  # of planned, weights (None: all of it, an older plan)
    run_bytes: int = 0  # KV cache and activations counted here (shape.counted)


@dataclass(frozen=True)
class Plan:
    """Where each component (and, when split, each block) goes."""

    source: str
    fingerprint: str
    strategy: str
    dtype: str | None  # a torch dtype name (float16), None: the checkpoint's own
    variant: str | None
    devices: tuple[DevicePlan, ...]
    device_map: Mapping[str, Where]
    component_maps: Mapping[str, Mapping[str, DeviceKey]] = field(default_factory=dict)
    components: Mapping[str, int] = field(default_factory=dict)  # bytes at the plan's dtype
    offloaded: tuple[str, ...] = ()
    fits: bool = True
    peak_fits: bool | None = None
    execution_device: DeviceKey | None = None
    peak_gpu: int | None = None
    held_for_offload: int = 0
    detected: bool = False  # no --max-memory: devices found on this machine
    block_bytes: Mapping[str, Mapping[DeviceKey, int]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    path: Path | None = None  # the file it was read from or saved to
    notes: tuple[str, ...] = ()  # for people (where the figures came from); not in the file
    world: WorldPlan | None = None  # a plan over torchrun ranks (--nodes / --procs-per-node)
    shape: RunShape = field(default_factory=RunShape)  # the run's shape (plan --batch ...)
    needs: Mapping[str, Needs] = field(default_factory=dict)  # activations, KV cache, inputs
    strategy_reason: str | None = None  # why this strategy, when it was not asked for
    # placement/built.py: component_maps in the built names, these in the stored ones
    stored_maps: Mapping[str, Mapping[str, DeviceKey]] = field(default_factory=dict)
    names: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per component

    @property
    def gpus(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if is_gpu(d.key))

    @property
    def target(self) -> DType | None:
        """The dtype to load at, as a :class:`DType`."""
        return parse_dtype(self.dtype) if self.dtype else None

    def device(self, key: DeviceKey) -> DevicePlan | None:
        return next((d for d in self.devices if d.key == key), None)

    def named_devices(self) -> set[DeviceKey]:
        """Every device the plan mentions anywhere."""
        keys: set[DeviceKey] = {d.key for d in self.devices}
        keys |= {d for d in self.device_map.values() if d != SPLIT}
        for module_map in self.component_maps.values():
            keys.update(module_map.values())
        if self.execution_device is not None:
            keys.add(self.execution_device)
        return keys

    def commit_for(self, source: str | None) -> str | None:
        """The commit the plan was made at when ``source`` is the repo id it names
        (``source`` ``org/name``, plan source ``org/name@<commit>``), else None."""
        repo, _, commit = self.source.partition("@")
        return commit if source == repo and commit else None

    def module_map(self, component: str) -> dict[str, DeviceKey]:
        """One component's placement in accelerate's ``device_map`` format."""
        where = self.device_map[component]
        return dict(self.component_maps[component]) if where == SPLIT else {"": where}

    def stored_map(self, component: str) -> dict[str, DeviceKey]:
        """The same placement over the checkpoint's own tensor names."""
        if component in self.stored_maps and self.device_map[component] == SPLIT:
            return dict(self.stored_maps[component])
        return self.module_map(component)

    def to_json(self) -> dict[str, Any]:
        """The plan file, schema version 1."""
        return self._doc() | (self.world.to_json() if self.world is not None else {})

    def _doc(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "strategy": self.strategy,
            "strategy_reason": self.strategy_reason,
            "dtype": self.dtype,
            "variant": self.variant,
            "devices": {
                key_text(d.key): {
                    "capacity": d.capacity,
                    "planned": d.planned,
                    "budget": d.budget,
                    "reserve": d.reserve,
                    "held": d.held,
                    "weights": d.planned if d.weights is None else d.weights,
                    "runtime": d.run_bytes,
                }
                for d in self.devices
            },
            "device_map": dict(self.device_map),
            "component_maps": {name: dict(m) for name, m in self.component_maps.items()},
            "stored_maps": {name: dict(m) for name, m in self.stored_maps.items()},
            "names": {name: dict(record) for name, record in self.names.items()},
            "offloaded": list(self.offloaded),
            "fits": self.fits,
            "peak_fits": self.peak_fits,
            "components": {
                name: {"bytes": n, **self.needs.get(name, Needs()).to_json()}
                for name, n in self.components.items()
            },
            "runtime": run_json(self.shape),
            "execution_device": self.execution_device,
            "peak_gpu": self.peak_gpu,
            "held_for_offload": self.held_for_offload,
            "detected": self.detected,
            "split_bytes": {
                name: {key_text(k): n for k, n in by_device.items()}
                for name, by_device in self.block_bytes.items()
            },
            "skipped": list(self.skipped),
        }

    def save(self, path: str | os.PathLike[str]) -> Plan:
        """Write the plan to ``path`` atomically; returns it with ``path`` set. An existing
        file is replaced only when it is an earlier plan: never a shard, a config, or
        anything else of the user's."""
        path = a.file(path, "path")
        with path_errors(path):
            if path.is_dir():
                raise BigmodelError("is a folder; -o wants a file name such as plan.json", path)
            if path.is_symlink() or (path.exists() and not _is_plan(path)):
                raise BigmodelError(
                    "exists and is not a bigmodel plan; refusing to overwrite it "
                    "(choose another -o)",
                    path,
                )
        write_json_atomically(path, self.to_json())
        return replace(self, path=path)


def _is_plan(path: Path) -> bool:
    try:
        read_plan(path)
    except BigmodelError:
        return False
    return True


# ---------------------------------------------------------------- reading


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """Parse and check a plan file; every problem is a :class:`BigmodelError` naming it.

    >>> plan = read_plan("plan.json")  # doctest: +SKIP
    >>> plan.device_map  # doctest: +SKIP
    {'unet': 0, 'vae': 1, 'text_encoder': 1}
    """
    path = a.file(path, "path")
    return plan_from_json(read_json(path, "plan", MAX_PLAN_BYTES), path)


def plan_from_json(doc: Mapping[str, Any], path: Path | None = None) -> Plan:
    """A :class:`Plan` from its JSON document (a dict), checked."""
    lacking = [key for key in REQUIRED if key not in doc]
    if lacking:
        raise BigmodelError(
            f"not a bigmodel plan: missing {', '.join(map(repr, lacking))} "
            "(write one with bigmodel plan -o)",
            path,
        )
    if type(doc["version"]) is not int or doc["version"] != PLAN_VERSION:  # true is not 1
        raise BigmodelError(
            f"plan version {doc['version']!r} is not supported (this bigmodel reads "
            f"version {PLAN_VERSION}); re-run bigmodel plan",
            path,
        )
    for key in ("source", "fingerprint"):
        if not isinstance(doc[key], str):
            raise BigmodelError(f"plan {key!r} is not a string", path)
    devices = _devices(doc["devices"], path)
    device_map = _device_map(doc["device_map"], path)
    known = {d.key for d in devices}
    for name, where in device_map.items():
        if where != SPLIT and where not in known:
            raise BigmodelError(f"plan puts {name!r} on {where!r}, not one of its devices", path)
    split = [name for name, where in device_map.items() if where == SPLIT]
    execution = doc.get("execution_device")
    return Plan(
        source=doc["source"],
        fingerprint=doc["fingerprint"],
        strategy=_strategy(doc, path),
        strategy_reason=_optional_str(doc, "strategy_reason", path),
        dtype=_dtype_name(doc, path),
        variant=_optional_str(doc, "variant", path),
        devices=devices,
        device_map=device_map,
        component_maps=_component_maps(doc, "component_maps", split, path),
        components=_components(doc.get("components"), path),
        offloaded=_names(doc, "offloaded", path),
        fits=bool(doc.get("fits", True)),
        peak_fits=doc.get("peak_fits") if isinstance(doc.get("peak_fits"), bool) else None,
        execution_device=None if execution is None else device_key(execution, path),
        peak_gpu=doc["peak_gpu"] if is_count(doc.get("peak_gpu")) else None,
        held_for_offload=doc["held_for_offload"] if is_count(doc.get("held_for_offload")) else 0,
        detected=bool(doc.get("detected", False)),
        block_bytes=_split_bytes(doc.get("split_bytes"), path),
        skipped=_names(doc, "skipped", path),
        path=path,
        world=world_from_json(doc, path),
        shape=run_from_json(doc.get("runtime"), path),
        needs=_needs(doc.get("components"), path),
        stored_maps=_component_maps(doc, "stored_maps", [], path),
        names={n: dict(r) for n, r in _objects(doc, "names", "records", path).items()},
    )


def device_key(value: object, path: Path | None) -> DeviceKey:
    """A device named in a plan file: ``0`` / ``"0"`` / ``"cuda:0"``, ``"cpu"``, ``"disk"``."""
    key = parse_device(value)
    if key is None:
        raise BigmodelError(
            f"plan names an unknown device {value!r} (expected a GPU index, cpu or disk)", path
        )
    return key


def _names(doc: Mapping[str, Any], key: str, path: Path | None) -> tuple[str, ...]:
    """A list of component names (absent: none)."""
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise BigmodelError(f"plan {key!r} is not a list of component names", path)
    return tuple(value)


def _optional_str(doc: Mapping[str, Any], key: str, path: Path | None) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise BigmodelError(f"plan {key!r} is not a string", path)
    return value


def _strategy(doc: Mapping[str, Any], path: Path | None) -> str:
    strategy = _optional_str(doc, "strategy", path) or DEFAULT_STRATEGY
    if strategy not in STRATEGIES:
        raise BigmodelError(f"plan strategy {strategy!r} is unknown", path)
    return strategy


def _dtype_name(doc: Mapping[str, Any], path: Path | None) -> str | None:
    name = _optional_str(doc, "dtype", path)
    try:
        return parse_dtype(name).name if name else None
    except BigmodelError as exc:
        raise BigmodelError(f"plan dtype: {exc.reason}", path) from None


def _devices(raw: Any, path: Path | None) -> tuple[DevicePlan, ...]:
    if not isinstance(raw, dict):
        raise BigmodelError("plan 'devices' is not an object", path)
    devices = []
    for key, entry in raw.items():
        entry = entry if isinstance(entry, dict) else {}
        planned, capacity = entry.get("planned"), entry.get("capacity")
        if not is_count(planned) or not (capacity is None or is_count(capacity)):
            raise BigmodelError(
                f"plan device {key!r} needs integer 'planned' and 'capacity' byte counts", path
            )
        budget = entry.get("budget", capacity)
        reserve = entry.get("reserve", 0)
        held, weights, run_bytes = (entry.get(k, 0) for k in ("held", "weights", "runtime"))
        devices.append(
            DevicePlan(
                device_key(key, path),
                budget if is_count(budget) else capacity,
                reserve if is_count(reserve) else 0,
                planned,
                held if is_count(held) else 0,
                weights if is_count(weights) and "weights" in entry else None,
                run_bytes if is_count(run_bytes) else 0,
            )
        )
    return tuple(devices)


def _device_map(raw: Any, path: Path | None) -> dict[str, Where]:
    if not isinstance(raw, dict) or not raw:
        raise BigmodelError("plan 'device_map' is not an object of component -> device", path)
    return {name: SPLIT if v == SPLIT else device_key(v, path) for name, v in raw.items()}


def _objects(doc: Mapping[str, Any], key: str, what: str, path: Path | None) -> dict[str, Any]:
    raw = {} if (raw := doc.get(key)) is None else raw  # absent: empty
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise BigmodelError(f"plan {key!r} is not an object of {what}", path)
    return raw


def _component_maps(
    doc: Mapping[str, Any], key: str, split: list[str], path: Path | None
) -> dict[str, dict[str, DeviceKey]]:
    raw = _objects(doc, key, "module maps", path)
    if lacking := [name for name in split if name not in raw]:
        raise BigmodelError(f"plan splits {lacking[0]!r} but has no {key} entry", path)
    return {name: {k: device_key(v, path) for k, v in m.items()} for name, m in raw.items()}


def _components(raw: Any, path: Path | None) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BigmodelError("plan 'components' is not an object", path)
    sizes = {}
    for name, entry in raw.items():
        nbytes = entry.get("bytes") if isinstance(entry, dict) else None
        if not is_count(nbytes):
            raise BigmodelError(f"plan component {name!r} needs an integer 'bytes'", path)
        sizes[name] = nbytes
    return sizes


def _needs(raw: Any, path: Path | None) -> dict[str, Needs]:
    entries = raw.items() if isinstance(raw, dict) else ()
    found = {n: needs_from_json(n, e, path) for n, e in entries if isinstance(e, dict)}
    return {n: needs for n, needs in found.items() if needs is not None}


def _split_bytes(raw: Any, path: Path | None) -> dict[str, dict[DeviceKey, int]]:
    if not isinstance(raw, dict):
        return {}
    return {
        name: {device_key(k, path): n for k, n in by_device.items() if is_count(n)}
        for name, by_device in raw.items()
        if isinstance(by_device, dict)
    }


PlanLike = Plan | Mapping[str, Any] | str | os.PathLike[str]


def as_plan(plan: PlanLike) -> Plan:
    """A plan object from a plan object, its JSON document, or the path of a plan file."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Mapping):
        return plan_from_json(plan)
    if isinstance(plan, str | os.PathLike):
        return read_plan(Path(plan))
    raise BigmodelError(
        "plan must be the path of a plan file (plan.json), its JSON document (a dict) or a "
        f"Plan (bigmodel_cli.plan(...)), not {plan!r}",
        argument="plan",
    )
