"""``sequential``: diffusers' model CPU offload (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from bigmodel_cli.devices import is_gpu
from bigmodel_cli.placement.items import Assignment, Bin, Part, Placement, room_of, to_host


def sequential(parts: Sequence[Part], bins: Sequence[Bin]) -> Assignment:
    """All on ``cpu`` (then ``disk``), each component moved to the first GPU in turn."""
    room = room_of(bins)
    hosts = [b.key for b in bins if not b.is_gpu]
    by_size = sorted(parts, key=lambda p: p.nbytes, reverse=True)
    devices = {p.name: to_host(room, hosts, p.nbytes) for p in by_size}
    runner = next((b.key for b in bins if is_gpu(b.key)), None)
    largest = max((p.nbytes + p.activations for p in parts), default=0)
    peak = largest if runner is not None else None
    return Assignment(tuple(Placement(p.name, devices[p.name]) for p in parts), runner, peak)
