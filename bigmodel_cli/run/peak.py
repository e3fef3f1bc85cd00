"""Measure the memory one call really takes beyond what was allocated before it.

On CUDA: ``torch.cuda.max_memory_allocated`` over the GPUs, less what was allocated
before. On the CPU: the profiler's memory events (``profile_memory=True``), every
allocation and free of the CPU allocator summed in order; the peak of that running sum
is the call's peak. An allocator-level count, not the process's RSS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def measure_peak(call: Callable[[], Any], gpus: Sequence[int] = ()) -> tuple[Any, int]:
    """Run ``call``; returns its result and the peak bytes it allocated above the start."""
    if gpus:
        return _cuda_peak(call, gpus)
    return _cpu_peak(call)


def _cuda_peak(call: Callable[[], Any], gpus: Sequence[int]) -> tuple[Any, int]:
    import torch

    start = {g: torch.cuda.memory_allocated(g) for g in gpus}
    for g in gpus:
        torch.cuda.reset_peak_memory_stats(g)
    result = call()
    for g in gpus:
        torch.cuda.synchronize(g)
    return result, sum(max(torch.cuda.max_memory_allocated(g) - start[g], 0) for g in gpus)


def _cpu_peak(call: Callable[[], Any]) -> tuple[Any, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
    live = peak = 0
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    for event in events:
        if event.device_type().name == "CPU" or str(event.device_type()).endswith("CPU"):
            live += int(event.nbytes())
            peak = max(peak, live)
    return result, peak
