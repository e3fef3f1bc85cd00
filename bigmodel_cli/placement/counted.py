"""Plans that count the run: the planner's items from a run-time estimate
(:mod:`bigmodel_cli.runtime.estimate`), and what the assignment puts on each device.

A part's bytes are its weights (after ``--dtype`` and ``--quantize``) plus its KV cache,
each layer's share in the unit of that layer; its activations are counted on the devices
that execute it: the device of a whole component, every GPU holding blocks of a split one
and the GPU that runs its offloaded blocks, the execution GPU under ``sequential``. The
components of a pipeline run in turn, so a device needs room for the largest
activations among those it runs, not their sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from bigmodel_cli.devices import DeviceKey, is_gpu
from bigmodel_cli.placement.describe import DeviceUse
from bigmodel_cli.placement.items import Assignment, Part, Placement, Unit
from bigmodel_cli.placement.order import forward_order
from bigmodel_cli.placement.units import build_units
from bigmodel_cli.runtime.estimate import ComponentRuntime, Estimate


def counted_part(
    needs: ComponentRuntime,
    config: Mapping[str, object] | None,
    no_split: Sequence[str],
    with_units: bool,
    counted: bool,
    limit: int | None = None,
    joined: Sequence[tuple[str, str]] = (),
) -> Part:
    """The planner's part for a component: weights (+ KV cache when ``counted``), its
    units in forward order (the class's when it was built), its activations; ``joined``:
    tensors its library needs together (:mod:`.built`)."""
    kv_total = needs.kv.total if counted and needs.kv else 0
    activations = (needs.activations or 0) if counted else 0
    nbytes = needs.weight_bytes + kv_total
    if not with_units or needs.name in no_split:
        return Part(needs.name, nbytes, activations=activations)
    units = build_units(list(needs.weights), config, no_split, limit, joined)
    if counted and needs.kv is not None:
        units = _with_kv(units, needs.kv.by_layer())
    return Part(needs.name, nbytes, forward_order(units, needs.order), activations)


def _with_kv(units: Sequence[Unit], by_layer: Mapping[str, int]) -> tuple[Unit, ...]:
    """Each unit with the KV cache of the layers it holds."""
    found = []
    for u in units:
        kv = sum(by_layer.get(p, 0) for p in u.prefixes)
        found.append(replace(u, nbytes=u.nbytes + kv, kv=kv) if kv else u)
    return tuple(found)


def execution_devices(p: Placement, runner: DeviceKey | None, peak_style: bool) -> set[DeviceKey]:
    """Where a component's forward pass runs (``peak_style``: moved to ``runner`` in turn)."""
    if peak_style and runner is not None:
        return {runner}
    if not p.units:
        return {p.device}
    gpus: set[DeviceKey] = {d for _, d in p.units if is_gpu(d)}
    if p.execution_device is not None:
        gpus.add(p.execution_device)
    return gpus or {next(d for _, d in p.units)}


def device_use(
    assignment: Assignment, parts: Sequence[Part], estimate: Estimate, peak_style: bool
) -> dict[DeviceKey, DeviceUse]:
    """Weights and run-time bytes per device under ``assignment``."""
    by_name = {p.name: p for p in parts}
    weights: dict[DeviceKey, int] = {}
    kv: dict[DeviceKey, int] = {}
    acts: dict[DeviceKey, int] = {}
    counted = estimate.shape.counted
    for placement in assignment.placements:
        part = by_name[placement.name]
        comp = estimate.components[placement.name]
        if placement.units:
            for unit, key in placement.units:
                weights[key] = weights.get(key, 0) + unit.nbytes - unit.kv
                kv[key] = kv.get(key, 0) + unit.kv
        else:
            weights[placement.device] = weights.get(placement.device, 0) + comp.weight_bytes
            kv[placement.device] = kv.get(placement.device, 0) + part.nbytes - comp.weight_bytes
        if not counted or peak_style:  # sequential: its peak_gpu counts them
            continue
        for key in execution_devices(placement, assignment.execution_device, peak_style):
            acts[key] = max(acts.get(key, 0), part.activations)
    keys = set(weights) | set(kv) | set(acts)
    return {
        k: DeviceUse(weights.get(k, 0), kv.get(k, 0) + acts.get(k, 0) if counted else 0)
        for k in keys
    }
