"""The planner's plain model: items with sizes, devices with capacities, and placements.

A :class:`Part` is a component (with its :class:`Unit` blocks, for strategies that split);
a :class:`Bin` a device and what may be put on it. A strategy returns a :class:`Assignment`:
one :class:`Placement` per part. Nothing here reads a file: a plan is data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bigmodel_cli.devices import DeviceKey, is_gpu

Room = dict[DeviceKey, int | None]  # what is left on each device; None: unlimited
Peaks = dict[DeviceKey, int]  # the largest activations counted on each device so far
SPLIT = "split"  # a component spread over several devices, a device per unit


@dataclass(frozen=True)
class Unit:
    """Blocks that go to one device together (one block, or blocks sharing tied tensors)."""

    prefixes: tuple[str, ...]
    nbytes: int
    kv: int = 0  # of nbytes, the KV cache of the layers in it (counted run time)
    # bytes of its largest module's own tensors (derived: not part of its identity)
    largest_module: int | None = field(default=None, compare=False)

    @property
    def moved(self) -> int:
        """What running it offloaded needs on the GPU at once: accelerate's hooks bring an
        offloaded block's weights over one module (its own tensors) at a time."""
        return self.nbytes - self.kv if self.largest_module is None else self.largest_module


@dataclass(frozen=True)
class Part:
    """A component to place: its bytes, and its units in natural order (for ``auto``)."""

    name: str
    nbytes: int
    units: tuple[Unit, ...] = ()
    activations: int = 0  # one forward pass's peak, on the device that runs it (counted)


@dataclass(frozen=True)
class Bin:
    """A device and what a plan may put on it; ``capacity`` None is unlimited."""

    key: DeviceKey
    capacity: int | None

    @property
    def is_gpu(self) -> bool:
        return is_gpu(self.key)


@dataclass(frozen=True)
class Placement:
    """Where one component goes: a device, or :data:`SPLIT` with a device per unit."""

    name: str
    device: DeviceKey
    units: tuple[tuple[Unit, DeviceKey], ...] = ()
    execution_device: int | None = None  # the GPU that runs its offloaded units
    held: int = 0  # bytes kept free there for the largest module of the offloaded units


@dataclass(frozen=True)
class Assignment:
    """A strategy's answer: one placement per component, in the order given."""

    placements: tuple[Placement, ...]
    execution_device: int | None = None
    peak_gpu: int | None = None  # sequential: the largest component


# ---------------------------------------------------------------- room on devices


def widest_gpu(bins: Sequence[Bin]) -> int | None:
    """The largest GPU capacity (a block larger than this fits no GPU whole)."""
    return max((b.capacity or 0 for b in bins if b.is_gpu), default=None)


def room_of(bins: Sequence[Bin]) -> Room:
    return {b.key: b.capacity for b in bins}


def take(room: Room, key: DeviceKey, nbytes: int) -> None:
    free = room[key]
    if free is not None:
        room[key] = free - nbytes


def to_host(room: Room, hosts: Sequence[DeviceKey], nbytes: int) -> DeviceKey:
    """The first host (cpu, then disk) with room; the last one when none has."""
    if not hosts:
        raise ValueError("a budget always has a host device (cpu)")
    for key in hosts:
        free = room[key]
        if free is None or nbytes <= free:
            take(room, key, nbytes)
            return key
    take(room, hosts[-1], nbytes)
    return hosts[-1]


def extra(peaks: Peaks, key: DeviceKey, activations: int) -> int:
    """What running a part with ``activations`` on ``key`` adds there: components run in
    turn, so a device needs room for the largest activations only, not their sum."""
    return max(0, activations - peaks.get(key, 0))


def charge(room: Room, peaks: Peaks, key: DeviceKey, part: Part) -> None:
    """Put ``part`` whole on ``key``: its bytes, and its activations where they are the
    largest there."""
    take(room, key, part.nbytes + extra(peaks, key, part.activations))
    peaks[key] = max(peaks.get(key, 0), part.activations)
