"""What ``bigmodel run`` decides before anything moves (pure functions, no torch).

Whether the checkpoint is still the one the plan was made from, which device each tensor
goes to (accelerate's longest-prefix rule for split components), how many bytes each
device receives, and what this machine lacks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from bigmodel_cli.checkpoint import Checkpoint, fingerprint
from bigmodel_cli.devices import DeviceKey, is_gpu, torch_device
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.placement.items import SPLIT
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.sizes import DTYPES, DType, bytes_at, format_size

Placements = dict[str, dict[str, DeviceKey]]  # component -> tensor -> device
CHANGED = "checkpoint changed since the plan was made; re-run bigmodel plan"


def module_device(name: str, module_map: Mapping[str, DeviceKey]) -> DeviceKey | None:
    """accelerate's rule: the device of the longest dotted prefix of ``name`` in the map."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        prefix = ".".join(parts[:i])
        if prefix in module_map:
            return module_map[prefix]
    return None


def placements(ckpt: Checkpoint, plan: Plan) -> Placements:
    """Component name -> tensor name -> device, for every tensor of the checkpoint."""
    result: Placements = {}
    for c in ckpt.components:
        where = plan.device_map.get(c.name)
        if where is None:
            raise BigmodelError(f"plan has no device for component {c.name!r}", plan.path)
        if where != SPLIT:
            result[c.name] = {t.name: where for t in c.tensors}
            continue
        module_map = plan.component_maps[c.name]
        place: dict[str, DeviceKey] = {}
        for t in c.tensors:
            dev = module_device(t.name, module_map)
            if dev is None:
                raise BigmodelError(
                    f"component_maps[{c.name!r}] has no entry for this tensor", plan.path, t.name
                )
            place[t.name] = dev
        result[c.name] = place
    return result


def load_bytes(ckpt: Checkpoint, place: Placements, target: DType | None) -> dict[DeviceKey, int]:
    """Bytes each device will hold, floating tensors at ``target`` (accelerate's rule)."""
    totals: dict[DeviceKey, int] = {}
    for c in ckpt.components:
        for t in c.tensors:
            dev = place[c.name][t.name]
            totals[dev] = totals.get(dev, 0) + bytes_at(DTYPES[t.dtype], t.numel, target)
    return totals


def missing_devices(needed: set[DeviceKey], gpu_count: int) -> list[int]:
    """GPU indexes the plan names that this machine does not have, in order."""
    return sorted(d for d in needed if is_gpu(d) and d >= gpu_count)


def shortfalls(need: Mapping[DeviceKey, int], free: Mapping[DeviceKey, int | None]) -> list[str]:
    """One sentence per device whose free memory now is less than what goes there."""
    return [
        f"{torch_device(dev)}: {format_size(n)} to load but {format_size(free[dev] or 0)} free now"
        for dev, n in sorted(need.items(), key=lambda item: str(item[0]))
        if free.get(dev) is not None and n > (free[dev] or 0)
    ]


def check_source(ckpt: Checkpoint, plan: Plan) -> None:
    """Refuse ``ckpt`` when its headers are not the ones ``plan`` was made from: another
    checkpoint, or this one changed since."""
    if fingerprint(ckpt) == plan.fingerprint:
        return
    if ckpt.repo is None and os.path.realpath(plan.source) != os.path.realpath(ckpt.source):
        raise BigmodelError(
            f"the plan was made for {plan.source}, a different checkpoint; "
            "re-run bigmodel plan on this one",
            ckpt.source,
        )
    raise BigmodelError(CHANGED, ckpt.origin)
