"""``--max-memory`` and ``--reserve`` parsing, and device detection."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest

from bigmodel_cli import devices
from bigmodel_cli.cli import as_flags
from bigmodel_cli.devices import Device, Reserve, make_budget, parse_max_memory, parse_reserve
from bigmodel_cli.errors import BigmodelError, UsageError


def test_max_memory_keys_units_and_order() -> None:
    parsed = parse_max_memory("cpu=32GB, 1=8GB,cuda:0=4GiB,disk")
    assert parsed == [(0, 4 * 2**30), (1, 8 * 10**9), ("cpu", 32 * 10**9), ("disk", None)]


def test_max_memory_disk_may_have_a_size() -> None:
    assert parse_max_memory("disk=1TB") == [("disk", 10**12)]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("gpu0=8GB", "expected DEVICE=SIZE"),
        ("mps=8GB", "expected DEVICE=SIZE"),
        ("0", "0 needs a size"),
        ("cpu", "cpu needs a size"),
        ("0=8XB", "'8XB'"),
        ("0=-1GB", "'-1GB'"),
        ("0=1GB,cuda:0=2GB", "listed twice"),
        ("", "expected DEVICE=SIZE"),
        ("0=1GB,,1=1GB", "expected DEVICE=SIZE"),
    ],
)
def test_bad_max_memory_is_a_usage_error(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match="invalid max_memory") as info:
        parse_max_memory(text)
    assert needle in str(info.value)
    assert as_flags(info.value).startswith("invalid --max-memory")  # the CLI's word
    assert "\n" not in str(info.value)


def test_reserve_size_or_percent() -> None:
    assert parse_reserve(None) == Reserve()
    assert parse_reserve("1.5GB").of(8 * 10**9) == 1_500_000_000
    assert parse_reserve("10%") == Reserve(percent=Decimal(10))
    assert parse_reserve(" 12.5 % ").of(8 * 10**9) == 10**9


@pytest.mark.parametrize("text", ["150%", "-5%", "x%", "%", "nan%", "five"])
def test_bad_reserve_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="invalid reserve") as info:
        parse_reserve(text)
    assert info.value.argument == "reserve"  # the CLI says --reserve (as_flags)
    assert as_flags(info.value).startswith("invalid --reserve")


def test_reserve_is_held_on_gpus_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "available_ram", lambda: 64 * 10**9)
    budget = make_budget("0=8GB,1=4GB,cpu=32GB,disk", "25%")
    assert budget.devices == (
        Device(0, 8 * 10**9, 2 * 10**9),
        Device(1, 4 * 10**9, 10**9),
        Device("cpu", 32 * 10**9, 0),
        Device("disk", None, 0),
    )
    assert [d.capacity for d in budget.devices] == [6 * 10**9, 3 * 10**9, 32 * 10**9, None]
    assert not budget.detected and not budget.cpu_implicit


def test_reserve_larger_than_a_gpu_leaves_nothing() -> None:
    assert Device(0, 10**9, 2 * 10**9).capacity == 0


def test_cpu_left_out_of_max_memory_is_the_available_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "available_ram", lambda: 7 * 10**9)
    budget = make_budget("1=1GB,disk", None)
    assert [(d.key, d.budget) for d in budget.devices] == [
        (1, 10**9),
        ("cpu", 7 * 10**9),
        ("disk", None),
    ]
    assert budget.cpu_implicit


def test_max_memory_given_never_detects(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list[tuple[int, int]]:
        raise AssertionError("GPU detection must not run when --max-memory is given")

    monkeypatch.setattr(devices, "detect_gpus", boom)
    assert [d.key for d in make_budget("0=1GB,cpu=2GB", None).devices] == [0, "cpu"]


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, free: list[int]) -> None:
    import torch

    def mem_get_info(index: int) -> tuple[int, int]:
        if free[index] < 0:
            raise RuntimeError("CUDA error: device unavailable")
        return free[index], 80 * 10**9

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(free))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)


def test_detects_gpus_free_memory_and_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, [30 * 10**9, -1, 10 * 10**9])
    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(available=5 * 10**9))
    budget = make_budget(None, "1GB")
    assert budget.detected
    assert [(d.key, d.budget, d.capacity) for d in budget.devices] == [
        (0, 30 * 10**9, 29 * 10**9),
        (2, 10 * 10**9, 9 * 10**9),
        ("cpu", 5 * 10**9, 5 * 10**9),
    ]


def test_no_gpu_detected_means_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, [])
    budget = make_budget(None, None)
    assert [d.key for d in budget.devices] == ["cpu"] and budget.gpus == ()


def test_a_path_keeps_its_words_when_the_argument_becomes_a_flag() -> None:
    """``force`` in the error's path or in a path quoted in its reason stays as written."""
    error = BigmodelError(
        "holds no checkpoint (/data/force/out/old.bin: empty); use force",
        "/data/force/out",
        argument="force",
    )
    assert as_flags(error) == (
        "/data/force/out: holds no checkpoint (/data/force/out/old.bin: empty); use --force"
    )
