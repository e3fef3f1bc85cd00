"""Devices and their budgets: parse ``--max-memory``, or detect GPUs and RAM; ``--reserve``.

``--max-memory 0=8GB,cuda:1=8GB,cpu=32GB,disk`` names every device a plan may use; a
GPU not listed is not used, and ``disk`` without a size is unlimited. Without the flag,
GPUs are found with ``torch.cuda.mem_get_info`` (torch is imported only then) and the
CPU budget is the available RAM. ``--reserve`` (a size or ``10%``) is held back on every
GPU for activations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeGuard

from bigmodel_cli.errors import UsageError
from bigmodel_cli.sizes import MAX_SIZE, parse_size

DeviceKey = int | str  # a GPU index, "cpu" or "disk"
HOSTS = ("cpu", "disk")
MAX_GPU_INDEX = 10**6  # more GPUs than any machine has: a larger index is a mistake
# ASCII digits only: "٣" (an Arabic-Indic three) is not GPU 3
_GPU_ID = re.compile(r"^(?:cuda:)?([0-9]{1,7})$", re.IGNORECASE | re.ASCII)
# accelerate's and transformers' max_memory: {0: "8GB", "cuda:1": 8_000_000_000, "disk": None}
MaxMemory = str | Mapping[int | str, int | str | None]

# ---------------------------------------------------------------- the device-id codec


def parse_device(value: object) -> DeviceKey | None:
    """``0`` / ``"0"`` / ``"cuda:0"`` / ``"cuda"`` -> ``0``; ``"cpu"``; ``"disk"``; else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= MAX_GPU_INDEX else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in HOSTS:
        return text
    match = _GPU_ID.match("0" if text == "cuda" else text)
    return int(match.group(1)) if match and int(match.group(1)) <= MAX_GPU_INDEX else None


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


def parse_max_memory(value: MaxMemory) -> list[tuple[DeviceKey, int | None]]:
    """``"0=8GB,cpu=32GB,disk"``, or accelerate's ``{0: "8GB", "cpu": 32e9, "disk": None}``
    -> ``[(0, 8e9), ("cpu", 32e9), ("disk", None)]``, ordered."""
    if isinstance(value, Mapping):
        entries = [_dict_entry(key, budget) for key, budget in value.items()]
        text = repr(dict(value))
    elif isinstance(value, str):
        entries = [_parse_entry(entry.strip(), value) for entry in value.split(",")]
        text = value
    else:
        raise UsageError(
            "max_memory must be a string such as '0=8GB,1=8GB,cpu=32GB,disk' or a dict such "
            f"as {{0: '8GB', 'cuda:1': 8_000_000_000, 'cpu': '32GB', 'disk': None}}, not "
            f"{type(value).__name__}",
            argument="max_memory",
        )
    found: dict[DeviceKey, int | None] = {}
    for key, budget in entries:
        if key in found:
            raise UsageError(
                f"invalid max_memory {text!r}: device {key} is listed twice", argument="max_memory"
            )
        found[key] = budget
    return [(k, found[k]) for k in sorted(found, key=device_order)]


def _dict_entry(name: object, budget: object) -> tuple[DeviceKey, int | None]:
    """One ``{device: budget}`` pair of a max_memory dict (accelerate's form)."""
    key = parse_device(name) if name != "cuda" else None
    if key is None:
        raise UsageError(
            f"invalid max_memory device {name!r}: expected a GPU index (0), 'cuda:N', 'cpu' "
            "or 'disk'",
            argument="max_memory",
        )
    if budget is None and key == "disk":
        return key, None
    if isinstance(budget, str):
        return key, parse_size(budget, f"max_memory size for {key}", "max_memory")
    if isinstance(budget, int) and not isinstance(budget, bool) and 0 <= budget <= MAX_SIZE:
        return key, budget
    raise UsageError(
        f"invalid max_memory budget {budget!r} for {key}: expected bytes (int) or a size "
        "such as '8GB' (None: unlimited, disk only)",
        argument="max_memory",
    )


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


def parse_reserve(text: str | int | None) -> Reserve:
    """``None`` -> nothing held; ``"2GB"`` or 2e9 -> 2e9 bytes; ``"10%"`` -> a tenth of each
    GPU."""
    if text is None:
        return Reserve()
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text <= MAX_SIZE:
        return Reserve(nbytes=text)
    if not isinstance(text, str):
        raise UsageError(
            f"reserve must be bytes (int), a size such as '2GB' or a percentage such as '10%', "
            f"not {text!r}",
            argument="reserve",
        )
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


def make_budget(max_memory: MaxMemory | None, reserve: str | int | None) -> Budget:
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
