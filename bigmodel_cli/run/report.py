"""What ``bigmodel run`` reports: per device planned against loaded, per component where
its tensors went, and what each step cost (:class:`RunReport`, rendered by
:mod:`bigmodel_cli.render.run`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.devices import DeviceKey, device_order, is_gpu, torch_device
from bigmodel_cli.placement.plan import Plan
from bigmodel_cli.run.load import Loaded
from bigmodel_cli.run.place import Placements

if TYPE_CHECKING:
    from bigmodel_cli.run.forward import ForwardResult


@dataclass(frozen=True)
class DeviceRun:
    """What one device holds after the run, beside what the plan promised."""

    key: DeviceKey
    planned: int
    loaded: int
    allocated: int | None
    peak: int | None
    seconds: float

    @property
    def label(self) -> str:
        return torch_device(self.key)

    @property
    def gb_per_s(self) -> float:
        return self.loaded / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ComponentRun:
    """One component: where the plan put it, how many tensors and bytes were loaded."""

    name: str
    device: DeviceKey
    tensors: int
    bytes: int
    bytes_by_device: dict[DeviceKey, int]


@dataclass(frozen=True)
class RunReport:
    source: str
    plan_file: str | None
    strategy: str
    dtype: str | None
    devices: tuple[DeviceRun, ...]
    components: tuple[ComponentRun, ...]
    verified: bool
    load_seconds: float
    verify_seconds: float | None
    total_seconds: float
    forward: tuple[ForwardResult, ...] = ()
    warnings: tuple[str, ...] = ()
    cpu_load: str = "mapped"  # cpu tensors: "mapped" from the file, or "copied" (--copy)


def device_runs(plan: Plan, acc: Loaded) -> tuple[DeviceRun, ...]:
    import torch

    keys = {d.key for d in plan.devices} | set(acc.nbytes)
    runs = []
    for dev in sorted(keys, key=device_order):
        loaded = acc.nbytes.get(dev, 0)
        allocated: int | None = None if dev == "disk" else loaded
        peak = allocated
        if is_gpu(dev):
            allocated = int(torch.cuda.memory_allocated(dev))
            peak = int(torch.cuda.max_memory_allocated(dev))
        device = plan.device(dev)
        planned = 0  # what is loaded here is weights: a plan's run time is not loaded
        if device is not None:
            planned = device.planned if device.weights is None else device.weights
        runs.append(DeviceRun(dev, planned, loaded, allocated, peak, acc.seconds.get(dev, 0.0)))
    return tuple(runs)


def component_runs(
    ckpt: Checkpoint, plan: Plan, place: Placements, acc: Loaded
) -> tuple[ComponentRun, ...]:
    sizes = {
        (info.file, info.name): tensor.numel() * tensor.element_size()
        for info, _dev, tensor in acc.tensors
    }
    runs = []
    for c in ckpt.components:
        by_device: dict[DeviceKey, int] = {}
        for t in c.tensors:
            dev = place[c.name][t.name]
            by_device[dev] = by_device.get(dev, 0) + sizes[(t.file, t.name)]
        runs.append(
            ComponentRun(
                c.name,
                plan.device_map[c.name],
                len(c.tensors),
                sum(by_device.values()),
                by_device,
            )
        )
    return tuple(runs)
