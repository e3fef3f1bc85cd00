"""Placement strategies: pure functions from items with sizes to devices with capacities.

- :func:`balanced`: whole components to GPUs as diffusers' ``device_map="balanced"`` does
  (largest first, GPUs by capacity, snake order), with an exact search where that greedy
  pass leaves a component off the GPUs although another assignment would not.
- :func:`auto`: components that fit a GPU go whole; the others are split at block level
  over the room left (:func:`split`); the rest goes to ``cpu``, then ``disk``, and room for
  the largest offloaded block is held on the GPU that runs it.
- :func:`sequential`: model CPU offload: every component on ``cpu``, run on the first GPU.

Nothing here reads a file: a plan is data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DeviceKey = int | str  # a GPU index, "cpu" or "disk"
Room = dict[DeviceKey, int | None]  # what is left on each device; None: unlimited
SEARCH_LIMIT = 200_000  # nodes of the exact search before the best found so far is kept


@dataclass(frozen=True)
class Unit:
    """Blocks that go to one device together (one block, or blocks sharing tied tensors)."""

    prefixes: tuple[str, ...]
    nbytes: int


@dataclass(frozen=True)
class Part:
    """A component to place: its bytes, and its units in natural order (for ``auto``)."""

    name: str
    nbytes: int
    units: tuple[Unit, ...] = ()


@dataclass(frozen=True)
class Bin:
    """A device and what a plan may put on it; ``capacity`` None is unlimited."""

    key: DeviceKey
    capacity: int | None

    @property
    def is_gpu(self) -> bool:
        return isinstance(self.key, int)


@dataclass(frozen=True)
class Placement:
    """Where one component goes: a device, or ``"split"`` with a device per unit."""

    name: str
    device: DeviceKey
    units: tuple[tuple[Unit, DeviceKey], ...] = ()
    execution_device: int | None = None  # the GPU that runs its offloaded units
    held: int = 0  # bytes kept free there for the largest offloaded unit


@dataclass(frozen=True)
class Layout:
    """A strategy's answer: one placement per component, in the order given."""

    placements: tuple[Placement, ...]
    execution_device: int | None = None
    peak_gpu: int | None = None  # sequential: the largest component


# ---------------------------------------------------------------- balanced


def diffusers_order(parts: Sequence[Part], bins: Sequence[Bin]) -> tuple[list[Part], list[Bin]]:
    """Components by size, largest first; GPUs by capacity, largest first (both stable)."""
    gpus = [b for b in bins if b.is_gpu]
    return (
        sorted(parts, key=lambda p: p.nbytes, reverse=True),
        sorted(gpus, key=lambda b: b.capacity or 0, reverse=True),
    )


def snake(parts: Sequence[Part], gpus: Sequence[Bin]) -> dict[str, DeviceKey]:
    """diffusers' pass: GPUs in the cycle 0,1,..,n-1,n-1,..,0; a component that does not fit
    the current GPU is left off (diffusers sends it to cpu) without advancing the cycle."""
    cycle = [*gpus, *reversed(gpus)]
    room = {g.key: g.capacity or 0 for g in gpus}
    placed: dict[str, DeviceKey] = {}
    turn = 0
    for part in parts if cycle else ():
        key = cycle[turn % len(cycle)].key
        if part.nbytes <= room[key]:
            placed[part.name] = key
            room[key] -= part.nbytes
            turn += 1
    return placed


def balanced(parts: Sequence[Part], bins: Sequence[Bin]) -> Layout:
    """Whole components to devices; every component appears exactly once."""
    room = _room(bins)
    on_gpu = gpu_assignment(parts, bins)
    for part in parts:
        if part.name in on_gpu:
            _take(room, on_gpu[part.name], part.nbytes)
    hosts = [b.key for b in bins if not b.is_gpu]
    off = sorted((p for p in parts if p.name not in on_gpu), key=lambda p: p.nbytes, reverse=True)
    devices = on_gpu | {p.name: _to_host(room, hosts, p.nbytes) for p in off}
    return Layout(tuple(Placement(p.name, devices[p.name]) for p in parts))


def gpu_assignment(parts: Sequence[Part], bins: Sequence[Bin]) -> dict[str, DeviceKey]:
    """The components that go to GPUs, and where: diffusers' snake when it places them all,
    else the search's best (all of them if any assignment can; else the fewest bytes left
    off, then the lowest fill of the fullest GPU; ties go to the one nearest the snake)."""
    order, gpus = diffusers_order(parts, bins)
    greedy = snake(order, gpus)
    if len(greedy) == len(order) or not gpus:
        return greedy
    return _Search(order, gpus, greedy).run()


class _Search:
    """Depth-first branch and bound over component -> GPU or off; components are few.

    Choices are tried in the snake's order (its GPU first, being left off last), so the
    first of equally good assignments found is the one nearest the snake.
    """

    def __init__(self, order: list[Part], gpus: list[Bin], prefer: dict[str, DeviceKey]) -> None:
        self.sizes = [p.nbytes for p in order]
        self.names = [p.name for p in order]
        self.caps = [g.capacity or 0 for g in gpus]
        self.keys = [g.key for g in gpus]
        index = {g.key: i for i, g in enumerate(gpus)}
        self.prefer = [index.get(prefer[n]) if n in prefer else None for n in self.names]
        self.used = [0] * len(gpus)
        self.choice = [-1] * len(order)  # GPU index, or -1: off the GPUs
        self.after = [sum(self.sizes[i:]) for i in range(len(order) + 1)]
        self.nodes = 0
        self.best: list[int] = [-1 if j is None else j for j in self.prefer]
        self.best_score = self._score(self.best)

    def run(self) -> dict[str, DeviceKey]:
        self._visit(0, 0)
        return {n: self.keys[j] for n, j in zip(self.names, self.best, strict=True) if j >= 0}

    def _score(self, choice: list[int]) -> tuple[int, float]:
        used = [0] * len(self.caps)
        off = 0
        for size, j in zip(self.sizes, choice, strict=True):
            if j < 0:
                off += size
            else:
                used[j] += size
        return off, (self._fill(used) if off else 0.0)

    def _fill(self, used: list[int]) -> float:
        ratios = [
            u / c if c else (0.0 if u == 0 else float("inf"))
            for u, c in zip(used, self.caps, strict=True)
        ]
        return max(ratios, default=0.0)

    def _bound(self, i: int, off: int) -> tuple[int, float]:
        """The best score any completion of the first ``i`` choices can reach."""
        room = [c - u for c, u in zip(self.caps, self.used, strict=True)]
        widest = max(room, default=0)
        unfit = sum(s for s in self.sizes[i:] if s > widest)
        least_off = off + max(unfit, self.after[i] - sum(room), 0)
        return least_off, (self._fill(self.used) if least_off else 0.0)

    def _visit(self, i: int, off: int) -> bool:
        """Explore from component ``i``; True stops the search (optimum found or limit hit)."""
        self.nodes += 1
        if self.nodes > SEARCH_LIMIT:
            return True
        bound = self._bound(i, off)
        if bound >= self.best_score:
            return False
        if i == len(self.sizes):
            self.best, self.best_score = list(self.choice), bound
            return off == 0
        for j in self._choices(i):
            size = self.sizes[i]
            if j >= 0:
                self.used[j] += size
            self.choice[i] = j
            stop = self._visit(i + 1, off + (size if j < 0 else 0))
            if j >= 0:
                self.used[j] -= size
            if stop:
                return True
        return False

    def _choices(self, i: int) -> list[int]:
        """GPUs with room (the snake's first; one of each identical GPU state), then off."""
        first = self.prefer[i]
        order = ([first] if first is not None else []) + [
            j for j in range(len(self.caps)) if j != first
        ]
        seen: set[tuple[int, int]] = set()
        found = []
        for j in order:
            state = (self.caps[j], self.used[j])
            if state not in seen and self.used[j] + self.sizes[i] <= self.caps[j]:
                seen.add(state)
                found.append(j)
        return [*found, -1]


# ---------------------------------------------------------------- auto


def auto(parts: Sequence[Part], bins: Sequence[Bin]) -> Layout:
    """Whole components where they fit a GPU; the others split block by block."""
    room = _room(bins)
    gpus = [b for b in bins if b.is_gpu]
    hosts = [b.key for b in bins if not b.is_gpu]
    widest = max((g.capacity or 0 for g in gpus), default=0)
    whole = [p for p in parts if p.nbytes <= widest or len(p.units) < 2]
    placed = {n: Placement(n, k) for n, k in gpu_assignment(whole, bins).items()}
    for part in parts:
        if part.name in placed:
            _take(room, placed[part.name].device, part.nbytes)
    rest = sorted((p for p in parts if p.name not in placed), key=lambda p: p.nbytes, reverse=True)
    for part in (p for p in rest if len(p.units) >= 2):
        placed[part.name] = _split_or_whole(part, gpus, hosts, room)
    for part in (p for p in rest if len(p.units) < 2):
        placed[part.name] = Placement(part.name, _to_host(room, hosts, part.nbytes))
    runs = [p.execution_device for p in placed.values() if p.execution_device is not None]
    return Layout(tuple(placed[p.name] for p in parts), runs[0] if runs else None)


def _split_or_whole(
    part: Part, gpus: Sequence[Bin], hosts: Sequence[DeviceKey], room: Room
) -> Placement:
    """Split ``part`` when that puts some of it on a GPU; a component that would only be
    spread over cpu and disk goes whole to the first host with room for it."""
    trial = dict(room)
    placement = split(part, gpus, hosts, trial)
    devices = {d for _, d in placement.units} or {placement.device}
    whole = next((h for h in hosts if room[h] is None or part.nbytes <= (room[h] or 0)), None)
    if any(isinstance(d, int) for d in devices) or whole is None:
        room.update(trial)
        return placement
    _take(room, whole, part.nbytes)
    return Placement(part.name, whole)


def split(part: Part, gpus: Sequence[Bin], hosts: Sequence[DeviceKey], room: Room) -> Placement:
    """Spread ``part``'s units over the GPUs' ``room`` (updated), the rest to the hosts.

    Offloaded units run on the lowest GPU the component uses (accelerate's main device),
    which keeps room free for the largest of them. Every such runner and every hold worth
    trying (none, or the size of a unit) is tried with two fills: natural order
    (contiguous, as accelerate fills) and largest first (tighter). The fill leaving the
    fewest bytes off the GPUs wins; ties go to the smaller hold, then natural order.
    """
    holds = sorted({0, *(u.nbytes for u in part.units)})
    trials = [
        _Trial.run(part.units, gpus[r:], room, h, packed)
        for r in range(len(gpus))
        for h in holds
        for packed in (0, 1)
    ]
    best = min(
        (t for t in trials if t.valid),
        key=lambda t: (t.off_bytes, t.hold, t.packed),
        default=_Trial(0, 0, {}, part.units, None, dict(room)),
    )
    left = dict(best.room)
    placed = dict(best.on_gpu)
    for unit in best.off:
        placed[unit] = _to_host(left, hosts, unit.nbytes)
    held = best.need if best.runner in best.on_gpu.values() else 0
    if best.runner is not None and held:
        _take(left, best.runner, held)
    room.update(left)
    units = tuple((u, placed[u]) for u in part.units)
    devices = {d for _, d in units}
    if len(devices) == 1:
        return Placement(part.name, devices.pop())
    return Placement(part.name, "split", units, best.runner if held else None, held)


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

    @property
    def need(self) -> int:
        return max((u.nbytes for u in self.off), default=0)

    @property
    def off_bytes(self) -> int:
        return sum(u.nbytes for u in self.off)

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
        runner = keys[0] if isinstance(keys[0], int) else None
        free = {key: room[key] or 0 for key in keys}
        free[keys[0]] -= hold
        if free[keys[0]] < 0:
            return _Trial(hold, packed, {}, tuple(units), None, room)
        order = sorted(units, key=lambda u: u.nbytes, reverse=True) if packed else list(units)
        on_gpu, off = _fill(order, keys, free, contiguous=not packed)
        _swap_in(on_gpu, off, free)
        free[keys[0]] += hold
        left = dict(room)
        left.update(free)
        return _Trial(hold, packed, on_gpu, tuple(u for u in units if u in off), runner, left)


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


# ---------------------------------------------------------------- sequential


def sequential(parts: Sequence[Part], bins: Sequence[Bin]) -> Layout:
    """diffusers' model CPU offload: all on ``cpu``, each moved to the first GPU in turn."""
    room = _room(bins)
    hosts = [b.key for b in bins if not b.is_gpu]
    by_size = sorted(parts, key=lambda p: p.nbytes, reverse=True)
    devices = {p.name: _to_host(room, hosts, p.nbytes) for p in by_size}
    runner = next((b.key for b in bins if isinstance(b.key, int)), None)
    peak = max((p.nbytes for p in parts), default=0) if runner is not None else None
    return Layout(tuple(Placement(p.name, devices[p.name]) for p in parts), runner, peak)


# ---------------------------------------------------------------- shared


def _room(bins: Sequence[Bin]) -> Room:
    return {b.key: b.capacity for b in bins}


def _take(room: Room, key: DeviceKey, nbytes: int) -> None:
    free = room[key]
    if free is not None:
        room[key] = free - nbytes


def _to_host(room: Room, hosts: Sequence[DeviceKey], nbytes: int) -> DeviceKey:
    """The first host (cpu, then disk) with room; the last one when none has."""
    if not hosts:
        raise ValueError("a budget always has a host device (cpu)")
    for key in hosts:
        free = room[key]
        if free is None or nbytes <= free:
            _take(room, key, nbytes)
            return key
    _take(room, hosts[-1], nbytes)
    return hosts[-1]
