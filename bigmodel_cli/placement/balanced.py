"""``balanced``: whole components to GPUs as diffusers' ``device_map="balanced"`` does
(largest first, GPUs by capacity, snake order), with an exact search where that greedy
pass leaves a component off the GPUs although another assignment would not."""

from __future__ import annotations

from collections.abc import Sequence

from bigmodel_cli.devices import DeviceKey
from bigmodel_cli.placement.items import (
    Assignment,
    Bin,
    Part,
    Peaks,
    Placement,
    charge,
    extra,
    room_of,
    to_host,
)

SEARCH_LIMIT = 200_000  # nodes of the exact search before the best found so far is kept


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
    room: dict[DeviceKey, int | None] = {g.key: g.capacity or 0 for g in gpus}
    peaks: Peaks = {}
    placed: dict[str, DeviceKey] = {}
    turn = 0
    for part in parts if cycle else ():
        key = cycle[turn % len(cycle)].key
        if part.nbytes + extra(peaks, key, part.activations) <= (room[key] or 0):
            placed[part.name] = key
            charge(room, peaks, key, part)
            turn += 1
    return placed


def balanced(parts: Sequence[Part], bins: Sequence[Bin]) -> Assignment:
    """Whole components to devices; every component appears exactly once."""
    room = room_of(bins)
    peaks: Peaks = {}
    on_gpu = gpu_assignment(parts, bins)
    for part in parts:
        if part.name in on_gpu:
            charge(room, peaks, on_gpu[part.name], part)
    hosts = [b.key for b in bins if not b.is_gpu]
    off = sorted((p for p in parts if p.name not in on_gpu), key=lambda p: p.nbytes, reverse=True)
    devices = on_gpu | {p.name: to_host(room, hosts, p.nbytes + p.activations) for p in off}
    return Assignment(tuple(Placement(p.name, devices[p.name]) for p in parts))


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
        self.acts = [p.activations for p in order]
        self.names = [p.name for p in order]
        self.caps = [g.capacity or 0 for g in gpus]
        self.keys = [g.key for g in gpus]
        index = {g.key: i for i, g in enumerate(gpus)}
        self.prefer = [index.get(prefer[n]) if n in prefer else None for n in self.names]
        self.used = [0] * len(gpus)  # bytes, and the largest activations (peak) on each GPU
        self.peak = [0] * len(gpus)
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
        peak = [0] * len(self.caps)
        off = 0
        for size, act, j in zip(self.sizes, self.acts, choice, strict=True):
            if j < 0:
                off += size
            else:
                used[j] += size
                peak[j] = max(peak[j], act)
        return off, (self._fill([u + p for u, p in zip(used, peak, strict=True)]) if off else 0.0)

    def _fill(self, used: list[int]) -> float:
        ratios = [
            u / c if c else (0.0 if u == 0 else float("inf"))
            for u, c in zip(used, self.caps, strict=True)
        ]
        return max(ratios, default=0.0)

    def _bound(self, i: int, off: int) -> tuple[int, float]:
        """The best score any completion of the first ``i`` choices can reach."""
        filled = [u + p for u, p in zip(self.used, self.peak, strict=True)]
        room = [c - f for c, f in zip(self.caps, filled, strict=True)]
        widest = max(room, default=0)
        unfit = sum(s for s in self.sizes[i:] if s > widest)
        least_off = off + max(unfit, self.after[i] - sum(room), 0)
        return least_off, (self._fill(filled) if least_off else 0.0)

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
            peak = self.peak[j] if j >= 0 else 0
            if j >= 0:
                self.used[j] += size
                self.peak[j] = max(peak, self.acts[i])
            self.choice[i] = j
            stop = self._visit(i + 1, off + (size if j < 0 else 0))
            if j >= 0:
                self.used[j] -= size
                self.peak[j] = peak
            if stop:
                return True
        return False

    def _choices(self, i: int) -> list[int]:
        """GPUs with room (the snake's first; one of each identical GPU state), then off."""
        first = self.prefer[i]
        order = ([first] if first is not None else []) + [
            j for j in range(len(self.caps)) if j != first
        ]
        seen: set[tuple[int, int, int]] = set()
        found = []
        for j in order:
            state = (self.caps[j], self.used[j], self.peak[j])
            need = self.sizes[i] + max(0, self.acts[i] - self.peak[j])
            if state not in seen and self.used[j] + self.peak[j] + need <= self.caps[j]:
                seen.add(state)
                found.append(j)
        return [*found, -1]
