"""Devices and their budgets: parse ``--max-memory``, or detect GPUs and RAM; ``--reserve``.

``--max-memory 0=8GB,cuda:1=8GB,cpu=32GB,disk`` names every device a plan may use; a
GPU not listed is not used, and ``disk`` without a size is unlimited. Without the flag,
GPUs are found with ``torch.cuda.mem_get_info`` (torch is imported only then) and the
CPU budget is the available RAM. ``--reserve`` (a size or ``10%``) is held back on every
GPU for activations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from bigmodel_cli.errors import UsageError
from bigmodel_cli.planner import DeviceKey
from bigmodel_cli.sizes import parse_size

HOSTS = ("cpu", "disk")
_GPU_KEY = re.compile(r"^(?:cuda:)?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """One device of a budget. ``budget`` None means unlimited (``disk`` alone)."""

    key: DeviceKey
    budget: int | None
    reserve: int = 0

    @property
    def is_gpu(self) -> bool:
        return isinstance(self.key, int)

    @property
    def capacity(self) -> int | None:
        """What a plan may fill: the budget less the reserve."""
        return None if self.budget is None else max(0, self.budget - self.reserve)

    @property
    def label(self) -> str:
        return f"GPU {self.key}" if self.is_gpu else str(self.key)


@dataclass(frozen=True)
class Budget:
    """The devices of a plan: GPUs by index, then ``cpu``, then ``disk``."""

    devices: tuple[Device, ...]
    detected: bool  # no --max-memory: found on this machine
    cpu_implicit: bool  # --max-memory left cpu out: its budget is the available RAM

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.is_gpu)


@dataclass(frozen=True)
class Reserve:
    """``--reserve``: a byte count, or a fraction of each GPU's budget."""

    nbytes: int = 0
    percent: Decimal | None = None

    def of(self, budget: int) -> int:
        if self.percent is None:
            return self.nbytes
        return int(budget * self.percent / 100)


def parse_max_memory(text: str) -> list[tuple[DeviceKey, int | None]]:
    """``"0=8GB,cpu=32GB,disk"`` -> ``[(0, 8e9), ("cpu", 32e9), ("disk", None)]``, ordered."""
    found: dict[DeviceKey, int | None] = {}
    for entry in text.split(","):
        key, budget = _parse_entry(entry.strip(), text)
        if key in found:
            raise UsageError(f"invalid --max-memory {text!r}: device {key} is listed twice")
        found[key] = budget
    gpus: list[DeviceKey] = sorted(k for k in found if isinstance(k, int))
    hosts: list[DeviceKey] = [h for h in HOSTS if h in found]
    return [(k, found[k]) for k in gpus + hosts]


def _parse_entry(entry: str, text: str) -> tuple[DeviceKey, int | None]:
    name, sep, value = entry.partition("=")
    name = name.strip().lower()
    match = _GPU_KEY.match(name)
    if not (match or name in HOSTS):
        raise UsageError(
            f"invalid --max-memory entry {entry!r} in {text!r}: expected DEVICE=SIZE with "
            "DEVICE one of N, cuda:N, cpu, disk (e.g. 0=8GB,1=8GB,cpu=32GB,disk)"
        )
    key: DeviceKey = int(match.group(1)) if match else name
    if not sep:
        if key != "disk":
            raise UsageError(f"invalid --max-memory entry {entry!r}: {key} needs a size, e.g. =8GB")
        return key, None
    return key, parse_size(value, f"--max-memory size for {key}")


def parse_reserve(text: str | None) -> Reserve:
    """``None`` -> nothing held; ``"2GB"`` -> 2e9 bytes; ``"10%"`` -> a tenth of each GPU."""
    if text is None:
        return Reserve()
    stripped = text.strip()
    if not stripped.endswith("%"):
        return Reserve(nbytes=parse_size(stripped, "--reserve"))
    try:
        percent = Decimal(stripped[:-1].strip())
    except InvalidOperation:
        percent = Decimal(-1)
    if not percent.is_finite() or not 0 <= percent <= 100:
        raise UsageError(f"invalid --reserve {text!r}: a percentage must be between 0% and 100%")
    return Reserve(percent=percent)


def detect_gpus() -> list[tuple[int, int]]:
    """``[(index, free bytes)]`` of this machine's CUDA GPUs; torch is imported here only."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        try:
            free, _total = torch.cuda.mem_get_info(index)
        except RuntimeError:  # a GPU that cannot be initialised is not used
            continue
        found.append((index, int(free)))
    return found


def available_ram() -> int:
    """RAM available now (psutil; /proc/meminfo where psutil is missing, as on bare GPU hosts)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return 0


def make_budget(max_memory: str | None, reserve: str | None) -> Budget:
    """The devices of a plan, from ``--max-memory`` or detected, with the reserve applied."""
    held = parse_reserve(reserve)
    if max_memory is None:
        entries: list[tuple[DeviceKey, int | None]] = [*detect_gpus(), ("cpu", available_ram())]
        return Budget(_with_reserve(entries, held), detected=True, cpu_implicit=False)
    entries = parse_max_memory(max_memory)
    implicit = all(key != "cpu" for key, _ in entries)
    if implicit:
        gpus = [e for e in entries if isinstance(e[0], int)]
        entries = [*gpus, ("cpu", available_ram()), *(e for e in entries if e[0] == "disk")]
    return Budget(_with_reserve(entries, held), detected=False, cpu_implicit=implicit)


def _with_reserve(entries: list[tuple[DeviceKey, int | None]], held: Reserve) -> tuple[Device, ...]:
    devices = []
    for key, budget in entries:
        reserve = held.of(budget) if isinstance(key, int) and budget is not None else 0
        devices.append(Device(key, budget, reserve))
    return tuple(devices)
