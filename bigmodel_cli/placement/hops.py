"""Device changes along the forward pass, and fewer of them.

Every change of device between two consecutive blocks of the forward order moves the
hidden states from one GPU to another, on every step. An offloaded block runs on the
GPU that runs the component's offloaded blocks (its runner), so it changes nothing
there. :func:`untangle` improves a placement by swapping blocks between GPUs (or moving
one, or a run of consecutive ones, where there is room, or trading a block on a GPU for
an offloaded one of the same size) while that removes changes, never putting more bytes
off the GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

from bigmodel_cli.devices import DeviceKey, is_gpu
from bigmodel_cli.placement.items import Unit


def runs_on(where: DeviceKey, runner: DeviceKey | None) -> DeviceKey:
    """The device that executes a block held on ``where``."""
    return where if is_gpu(where) or runner is None else runner


def changes(devices: Sequence[DeviceKey]) -> int:
    """How often consecutive entries differ."""
    return sum(1 for a, b in zip(devices, devices[1:], strict=False) if a != b)


class _State:
    def __init__(
        self,
        units: Sequence[Unit],
        where: dict[Unit, DeviceKey],
        free: dict[DeviceKey, int],
        runner: DeviceKey | None,
    ) -> None:
        self.units = list(units)
        self.where = where
        self.free = free
        self.runner = runner
        self.runs = [runs_on(where[u], runner) for u in self.units]

    def cost_around(self, *positions: int) -> int:
        edges = {e for i in positions for e in (i - 1, i) if 0 <= e < len(self.runs) - 1}
        return sum(1 for e in edges if self.runs[e] != self.runs[e + 1])

    def assign(self, i: int, key: DeviceKey) -> None:
        unit = self.units[i]
        old = self.where[unit]
        if is_gpu(old):
            self.free[old] += unit.nbytes
        if is_gpu(key):
            self.free[key] -= unit.nbytes
        self.where[unit] = key
        self.runs[i] = runs_on(key, self.runner)

    def feasible(self) -> bool:
        return all(v >= 0 for v in self.free.values())

    def attempt(self, moves: list[tuple[int, DeviceKey]]) -> bool:
        """Apply ``moves`` when they fit and remove changes; else undo them."""
        touched = [i for i, _ in moves]
        before = self.cost_around(*touched)
        undo = [(i, self.where[self.units[i]]) for i, _ in moves]
        for i, key in moves:
            self.assign(i, key)
        if self.feasible() and self.cost_around(*touched) < before:
            return True
        for i, key in reversed(undo):
            self.assign(i, key)
        return False


def untangle(
    units: Sequence[Unit],
    where: dict[Unit, DeviceKey],
    free: dict[DeviceKey, int],
    runner: DeviceKey | None,
) -> None:
    """Rearrange ``where`` (units in forward order -> device; ``free``: room left on each
    GPU) for fewer device changes, keeping every GPU within its room and the bytes off
    the GPUs the same. Both dicts are updated."""
    state = _State(units, where, free, runner)
    n = len(state.units)
    gpus = list(free)
    improved = True
    while improved:
        improved = False
        edges = [e for e in range(n - 1) if state.runs[e] != state.runs[e + 1]]
        for i in sorted({p for e in edges for p in (e, e + 1)}):
            improved |= _improve(state, i, gpus, n)
        improved = improved or _move_a_run(state, gpus)


def _improve(state: _State, i: int, gpus: list[DeviceKey], n: int) -> bool:
    unit = state.units[i]
    here = state.where[unit]
    if is_gpu(here):
        for key in gpus:
            if key != here and state.attempt([(i, key)]):
                return True
    for j in range(n):
        other = state.units[j]
        there = state.where[other]
        if j == i or there == here:
            continue
        if not (is_gpu(here) and is_gpu(there)) and unit.nbytes != other.nbytes:
            continue  # trading with an offloaded block: same bytes off the GPUs
        if not (is_gpu(here) and is_gpu(there)) and unit.moved != other.moved:
            continue  # ... and the same room held for it
        if state.attempt([(i, there), (j, here)]):
            return True
    return False


def _move_a_run(state: _State, gpus: list[DeviceKey]) -> bool:
    """Move one run of consecutive blocks held on the same GPU to another GPU with room,
    when that removes changes (``norm_out, proj_out`` to the GPU that ran the block
    before them, say)."""
    n = len(state.units)
    start = 0
    while start < n:
        key = state.where[state.units[start]]
        end = start + 1
        while end < n and state.where[state.units[end]] == key:
            end += 1
        if is_gpu(key):
            for other in gpus:
                if other != key and state.attempt([(i, other) for i in range(start, end)]):
                    return True
        start = end
    return False
