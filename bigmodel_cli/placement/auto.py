"""``auto``: components that fit a GPU go whole; the others are split at block level
over the room left (:func:`split`); the rest goes to ``cpu``, then ``disk``, and room for
the largest module of the offloaded blocks is held on the GPU that runs them. Among
splits that leave equally few bytes off the GPUs, the one with the fewest device changes
along the forward order (:mod:`.hops`) wins. A component's activations (counted run
time) are held on every GPU that runs part of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bigmodel_cli.devices import DeviceKey, is_gpu
from bigmodel_cli.placement.balanced import gpu_assignment
from bigmodel_cli.placement.hops import changes, runs_on, untangle
from bigmodel_cli.placement.items import (
    SPLIT,
    Assignment,
    Bin,
    Part,
    Peaks,
    Placement,
    Room,
    Unit,
    charge,
    extra,
    room_of,
    take,
    to_host,
)


def auto(parts: Sequence[Part], bins: Sequence[Bin]) -> Assignment:
    """Whole components where they fit a GPU; the others split block by block over the
    GPUs' room; what stays off the GPUs goes whole to ``cpu`` where it fits (smallest
    first), and a component that does not is split between ``cpu`` and ``disk``."""
    room = room_of(bins)
    peaks: Peaks = {}
    gpus = [b for b in bins if b.is_gpu]
    hosts = [b.key for b in bins if not b.is_gpu]
    widest = max((g.capacity or 0 for g in gpus), default=0)
    whole = [p for p in parts if p.nbytes + p.activations <= widest or len(p.units) < 2]
    placed = {n: Placement(n, k) for n, k in gpu_assignment(whole, bins).items()}
    for part in parts:
        if part.name in placed:
            charge(room, peaks, placed[part.name].device, part)
    rest = sorted((p for p in parts if p.name not in placed), key=lambda p: p.nbytes, reverse=True)
    for part in (p for p in rest if len(p.units) >= 2):
        on_gpus = _on_gpus(part, gpus, hosts, room, peaks)
        if on_gpus is not None:
            placed[part.name] = on_gpus
    off = [p for p in rest if p.name not in placed]
    for part in sorted(off, key=lambda p: p.nbytes):  # whole into RAM, as many as fit
        if _fits(room, hosts[0], part.nbytes + part.activations):
            take(room, hosts[0], part.nbytes + part.activations)
            placed[part.name] = Placement(part.name, hosts[0])
    for part in (p for p in off if p.name not in placed):
        placed[part.name] = _over_hosts(part, hosts, room)
    runs = [p.execution_device for p in placed.values() if p.execution_device is not None]
    return Assignment(tuple(placed[p.name] for p in parts), runs[0] if runs else None)


def _fits(room: Room, key: DeviceKey, nbytes: int) -> bool:
    free = room[key]
    return free is None or nbytes <= free


def _on_gpus(
    part: Part, gpus: Sequence[Bin], hosts: Sequence[DeviceKey], room: Room, peaks: Peaks
) -> Placement | None:
    """``part`` split at block level when that puts some of it on a GPU (``room`` and
    ``peaks`` taken), else None."""
    trial, trial_peaks = dict(room), dict(peaks)
    placement = split(part, gpus, hosts, trial, trial_peaks)
    devices = {d for _, d in placement.units} or {placement.device}
    if not any(is_gpu(d) for d in devices):
        return None
    room.update(trial)
    peaks.update(trial_peaks)
    return placement


def _over_hosts(part: Part, hosts: Sequence[DeviceKey], room: Room) -> Placement:
    """Off the GPUs and too big for what RAM has left: blocks to ``cpu`` while they fit,
    the rest to ``disk``, as accelerate fills them; whole to the first host with room when
    no block fits RAM (or it is a single block)."""
    if len(part.units) >= 2:
        trial = dict(room)
        placement = split(part, (), hosts, trial)
        devices = {d for _, d in placement.units} or {placement.device}
        if hosts[0] in devices:
            room.update(trial)
            return placement
    return Placement(part.name, to_host(room, hosts, part.nbytes))


def split(
    part: Part,
    gpus: Sequence[Bin],
    hosts: Sequence[DeviceKey],
    room: Room,
    peaks: Peaks | None = None,
) -> Placement:
    """Spread ``part``'s units (in forward order) over the GPUs' ``room`` (updated), the
    rest to the hosts.

    Offloaded units run on the lowest GPU the component uses (accelerate's main device),
    which keeps room free for the largest module among them (accelerate's hooks move an
    offloaded block's weights one module at a time). Every such runner and every hold
    worth trying (none, or what a unit moves) is tried with two fills: forward order
    (contiguous, as accelerate fills) and largest first (tighter). Fewest bytes off the
    GPUs first; among those, the fill with the fewest device changes once untangled
    (:func:`~bigmodel_cli.placement.hops.untangle`), then the smaller hold, forward order.
    Each GPU that runs part of it keeps room for its activations.
    """
    peaks = {} if peaks is None else peaks
    holds = sorted({0, *(u.moved for u in part.units)})
    acts = {g.key: extra(peaks, g.key, part.activations) for g in gpus}
    usable = {**room, **{k: (room[k] or 0) - a for k, a in acts.items()}}
    trials = [
        _Trial.run(part.units, gpus[r:], usable, h, packed)
        for r in range(len(gpus))
        for h in holds
        for packed in (0, 1)
    ]
    best = _fewest_changes(part.units, [t for t in trials if t.valid]) or _Trial(
        0, 0, {}, part.units, None, dict(usable)
    )
    left = dict(best.room)
    placed = dict(best.on_gpu)
    for unit in best.off:
        placed[unit] = to_host(left, hosts, unit.nbytes)
    held = best.need if best.runner in best.on_gpu.values() else 0
    if best.runner is not None and held:
        take(left, best.runner, held)
    units = tuple((u, placed[u]) for u in part.units)
    used = {d for _, d in units if is_gpu(d)}
    for key, act in acts.items():
        if key in used:
            peaks[key] = max(peaks.get(key, 0), part.activations)
        else:
            left[key] = (left[key] or 0) + act  # runs nothing here: its room back
    room.update(left)
    devices = {d for _, d in units}
    if len(devices) == 1:
        return Placement(part.name, devices.pop())
    return Placement(part.name, SPLIT, units, best.runner if held else None, held)


def _fewest_changes(units: Sequence[Unit], trials: list[_Trial]) -> _Trial | None:
    """Of the trials leaving the fewest bytes off the GPUs, each untangled once (equal
    fills once), the one with the fewest device changes; then the smaller hold."""
    if not trials:
        return None
    least = min(t.off_bytes for t in trials)
    seen: set[tuple[object, ...]] = set()
    kept = []
    for trial in sorted(trials, key=lambda t: (t.hold, t.packed)):
        if trial.off_bytes != least:
            continue
        key = (trial.runner, trial.hold, *(trial.on_gpu.get(u) for u in units))
        if key not in seen:
            seen.add(key)
            kept.append(trial.untangled(units))
    return min(kept, key=lambda t: (t.changes(units), t.hold, t.packed))


@dataclass(frozen=True)
class _Trial:
    """One fill of a component's units over GPUs, the first of which (the runner) holds
    ``hold`` free for the offloaded units it will run."""

    hold: int
    packed: int  # 0: natural order, 1: largest first
    on_gpu: dict[Unit, DeviceKey]
    off: tuple[Unit, ...]
    runner: int | None
    room: Room
    gpus: tuple[DeviceKey, ...] = ()  # those it may fill, the runner first

    @property
    def need(self) -> int:
        return max((u.moved for u in self.off), default=0)

    @property
    def off_bytes(self) -> int:
        return sum(u.nbytes for u in self.off)

    def changes(self, units: Sequence[Unit]) -> int:
        """Device changes along ``units`` (offloaded ones run on the runner)."""
        host = "cpu"
        return changes([runs_on(self.on_gpu.get(u, host), self.runner) for u in units])

    def untangled(self, units: Sequence[Unit]) -> _Trial:
        """The same bytes on each side of the GPUs, with fewer device changes."""
        free = {k: (self.room[k] or 0) - (self.hold if k == self.runner else 0) for k in self.gpus}
        where: dict[Unit, DeviceKey] = {u: self.on_gpu.get(u, "cpu") for u in units}
        untangle(units, where, free, self.runner)
        on_gpu: dict[Unit, DeviceKey] = {u: d for u, d in where.items() if is_gpu(d)}
        room = dict(self.room)
        for key, value in free.items():
            room[key] = value + (self.hold if key == self.runner else 0)
        off = tuple(u for u in units if u not in on_gpu)
        better = _Trial(self.hold, self.packed, on_gpu, off, self.runner, room, self.gpus)
        return better if better.valid else self

    @property
    def valid(self) -> bool:
        """The hold covers the offloaded units, and is on the lowest GPU used."""
        used = set(self.on_gpu.values())
        return self.need <= self.hold and (not used or not self.off or self.runner in used)

    @staticmethod
    def run(
        units: Sequence[Unit], gpus: Sequence[Bin], room: Room, hold: int, packed: int
    ) -> _Trial:
        keys = [g.key for g in gpus]
        runner = keys[0] if is_gpu(keys[0]) else None
        free = {key: room[key] or 0 for key in keys}
        free[keys[0]] -= hold
        if free[keys[0]] < 0:
            return _Trial(hold, packed, {}, tuple(units), None, room, tuple(keys))
        order = sorted(units, key=lambda u: u.nbytes, reverse=True) if packed else list(units)
        on_gpu, off = _fill(order, keys, free, contiguous=not packed)
        _swap_in(on_gpu, off, free)
        free[keys[0]] += hold
        left = dict(room)
        left.update(free)
        off_units = tuple(u for u in units if u in off)
        return _Trial(hold, packed, on_gpu, off_units, runner, left, tuple(keys))


def _fill(
    units: Sequence[Unit], gpus: Sequence[DeviceKey], free: dict[DeviceKey, int], contiguous: bool
) -> tuple[dict[Unit, DeviceKey], list[Unit]]:
    """Each unit to the first GPU with room (from the last one used when ``contiguous``)."""
    on_gpu: dict[Unit, DeviceKey] = {}
    off: list[Unit] = []
    start = 0
    for unit in units:
        for j in range(start, len(gpus)):
            if unit.nbytes <= free[gpus[j]]:
                free[gpus[j]] -= unit.nbytes
                on_gpu[unit] = gpus[j]
                start = j if contiguous else 0
                break
        else:
            off.append(unit)
    return on_gpu, off


def _swap_in(on_gpu: dict[Unit, DeviceKey], off: list[Unit], free: dict[DeviceKey, int]) -> None:
    """Bring offloaded units onto a GPU of ``free``, alone or in place of a smaller unit
    there, while that puts more bytes on the GPUs (a local improvement of either fill)."""
    improved = True
    while improved:
        improved = False
        for unit in sorted(off, key=lambda u: u.nbytes, reverse=True):
            move = _best_move(unit, on_gpu, free)
            if move is None:
                continue
            key, out = move
            off.remove(unit)
            on_gpu[unit] = key
            free[key] -= unit.nbytes
            if out is not None:
                del on_gpu[out]
                off.append(out)
                free[key] += out.nbytes
            improved = True
            break


def _best_move(
    unit: Unit, on_gpu: dict[Unit, DeviceKey], free: dict[DeviceKey, int]
) -> tuple[DeviceKey, Unit | None] | None:
    """A GPU with room for ``unit``, or the smallest unit to swap out for it."""
    for key, room in free.items():
        if unit.nbytes <= room:
            return key, None
    swaps = [
        (other.nbytes, key, other)
        for other, key in on_gpu.items()
        if key in free and other.nbytes < unit.nbytes <= free[key] + other.nbytes
    ]
    if not swaps:
        return None
    _, key, other = min(swaps, key=lambda s: s[0])
    return key, other
