"""Devices and their budgets: parse ``--max-memory``, or detect GPUs and RAM; ``--reserve``.

``--max-memory 0=8GB,cuda:1=8GB,cpu=32GB,disk`` names every device a plan may use; a
GPU not listed is not used, and ``disk`` without a size is unlimited. Without the flag,
GPUs are found with ``torch.cuda.mem_get_info`` (torch is imported only then) and the
CPU budget is the available RAM. ``--reserve`` (a size or ``10%``) is held back on every
GPU for activations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeGuard

from bigmodel_cli.errors import UsageError
from bigmodel_cli.sizes import parse_size

DeviceKey = int | str  # a GPU index, "cpu" or "disk"
HOSTS = ("cpu", "disk")
_GPU_ID = re.compile(r"^(?:cuda:)?(\d+)$", re.IGNORECASE)

# ---------------------------------------------------------------- the device-id codec


def parse_device(value: object) -> DeviceKey | None:
    """``0`` / ``"0"`` / ``"cuda:0"`` / ``"cuda"`` -> ``0``; ``"cpu"``; ``"disk"``; else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in HOSTS:
        return text
    match = _GPU_ID.match("0" if text == "cuda" else text)
    return int(match.group(1)) if match else None


def is_gpu(key: DeviceKey) -> TypeGuard[int]:
    return isinstance(key, int)


def torch_device(key: DeviceKey) -> str:
    """torch's name: ``0`` -> ``"cuda:0"``; ``"cpu"`` and ``"disk"`` stay."""
    return f"cuda:{key}" if is_gpu(key) else str(key)


def key_text(key: DeviceKey) -> str:
    """The key of a JSON object: ``0`` -> ``"0"``."""
    return str(key)


def device_label(key: DeviceKey) -> str:
    """For people: ``GPU 0``, ``cpu``, ``disk``."""
    return f"GPU {key}" if is_gpu(key) else str(key)


def device_order(key: DeviceKey) -> tuple[int, int, str]:
    """Sort key: GPUs by index, then cpu, then disk."""
    if isinstance(key, int):
        return (0, key, "")
    return (1, HOSTS.index(key) if key in HOSTS else len(HOSTS), key)


@dataclass(frozen=True)
class Device:
    """One device of a budget. ``budget`` None means unlimited (``disk`` alone)."""

    key: DeviceKey
    budget: int | None
    reserve: int = 0

    @property
    def is_gpu(self) -> bool:
        return is_gpu(self.key)

    @property
    def capacity(self) -> int | None:
        """What a plan may fill: the budget less the reserve."""
        return None if self.budget is None else max(0, self.budget - self.reserve)

    @property
    def label(self) -> str:
        return device_label(self.key)


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
            raise UsageError(
                f"invalid max_memory {text!r}: device {key} is listed twice", argument="max_memory"
            )
        found[key] = budget
    return [(k, found[k]) for k in sorted(found, key=device_order)]


def _parse_entry(entry: str, text: str) -> tuple[DeviceKey, int | None]:
    name, sep, value = entry.partition("=")
    key = parse_device(name) if name.strip().lower() != "cuda" else None
    if key is None:
        raise UsageError(
            f"invalid max_memory entry {entry!r} in {text!r}: expected DEVICE=SIZE with "
            "DEVICE one of N, cuda:N, cpu, disk (e.g. 0=8GB,1=8GB,cpu=32GB,disk)",
            argument="max_memory",
        )
    if not sep:
        if key != "disk":
            raise UsageError(
                f"invalid max_memory entry {entry!r}: {key} needs a size, e.g. =8GB",
                argument="max_memory",
            )
        return key, None
    return key, parse_size(value, f"max_memory size for {key}", "max_memory")


def parse_reserve(text: str | None) -> Reserve:
    """``None`` -> nothing held; ``"2GB"`` -> 2e9 bytes; ``"10%"`` -> a tenth of each GPU."""
    if text is None:
        return Reserve()
    stripped = text.strip()
    if not stripped.endswith("%"):
        return Reserve(nbytes=parse_size(stripped, "reserve", "reserve"))
    try:
        percent = Decimal(stripped[:-1].strip())
    except InvalidOperation:
        percent = Decimal(-1)
    if not percent.is_finite() or not 0 <= percent <= 100:
        raise UsageError(
            f"invalid reserve {text!r}: a percentage must be between 0% and 100%",
            argument="reserve",
        )
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
        gpus = [e for e in entries if is_gpu(e[0])]
        entries = [*gpus, ("cpu", available_ram()), *(e for e in entries if e[0] == "disk")]
    return Budget(_with_reserve(entries, held), detected=False, cpu_implicit=implicit)


def _with_reserve(entries: list[tuple[DeviceKey, int | None]], held: Reserve) -> tuple[Device, ...]:
    devices = []
    for key, budget in entries:
        reserve = held.of(budget) if is_gpu(key) and budget is not None else 0
        devices.append(Device(key, budget, reserve))
    return tuple(devices)


def reset_gpu_peaks(keys: Iterable[DeviceKey]) -> None:
    """Start counting peak GPU memory afresh on the GPUs among ``keys`` (torch imported)."""
    gpus = [k for k in keys if is_gpu(k)]
    if gpus:
        import torch

        torch.cuda.init()  # before any allocation the allocator refuses ("Invalid device argument")
        for key in gpus:
            torch.cuda.reset_peak_memory_stats(key)
