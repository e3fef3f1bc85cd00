"""Activation estimates against torch's own measurement, shared by the tests
(``tests/test_activations.py``) and the benchmark that prints the README's figures
(``benchmarks/bench_activations.py``).

The measurement is torch.profiler's allocator events (``profile_memory``: every
allocation and free on the CPU, with its size and time) summed in time order, taken
here, never from the code under test (``bigmodel_cli/run/peak.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.runtime import TINY_FLUX

# estimate / measured - 1, lowest and highest, per kind of component: the README's figures
# (UNet, CLIP and a Flux-style transformer within 2%, a Llama prefill 1-6% over, the VAE
# decode 0-15% under: the CPU's flash-attention kernel allocates scratch the trace cannot see)
BOUNDS: Mapping[str, tuple[float, float]] = {
    "unet": (-0.02, 0.02),
    "text": (-0.02, 0.02),
    "flux": (-0.02, 0.02),
    "lm": (0.01, 0.06),
    "vae": (-0.15, 0.0),
}
# batch, side, context; at small sides the CPU's flash-attention kernel adds per-thread
# scratch (about 0.5 MB) that no GPU kernel allocates and the fake trace does not see
PIPELINE_SHAPES: Sequence[tuple[int, int, int]] = [(1, 96, 16), (2, 128, 32), (1, 192, 77)]
FLUX_SHAPES: Sequence[tuple[int, int, int]] = [(1, 64, 16), (2, 128, 32), (1, 256, 64)]
LLAMA_SHAPES: Sequence[tuple[int, int]] = [(1, 32), (2, 64), (4, 128)]  # batch, context
# the CPU's attention kernels allocate scratch per thread: the README's figures are at 2
THREADS = 2
PIPELINE_COMPONENTS = [  # component, library, class, kind
    ("unet", "diffusers", "UNet2DConditionModel", "unet"),
    ("vae", "diffusers", "AutoencoderKL", "vae"),
    ("text_encoder", "transformers", "CLIPTextModel", "text"),
]


def profiled_peak(call: Callable[[], object]) -> int:
    """The peak of the bytes ``call`` holds allocated on the CPU above its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type().name == "CPU":
            live += int(event.nbytes())
            peak = max(peak, live)
    return peak


def measured(model: Any, kind: str, shapes: Mapping[str, Sequence[int]]) -> int:
    """The profiled peak of one forward pass of ``model`` fed ``shapes`` (the plan's
    ``inputs``), as the planner's estimate assumes it, on :data:`THREADS` threads."""
    import torch

    from bigmodel_cli.runtime.calls import forward, make_inputs

    fed = {k: tuple(v) for k, v in shapes.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return profiled_peak(lambda: forward(kind, model, make_inputs(fed, torch.float32)))
    finally:
        torch.set_num_threads(threads)


def off(estimate: int | None, peak: int) -> float:
    """How far ``estimate`` is from the measured ``peak``: estimate / peak - 1."""
    assert estimate is not None and peak > 0
    return estimate / peak - 1


def within(kind: str, estimate: int | None, peak: int) -> bool:
    low, high = BOUNDS[kind]
    return low <= off(estimate, peak) <= high


def load(library: str, class_name: str, folder: Path) -> Any:
    cls = getattr(importlib.import_module(library), class_name)
    return cls.from_pretrained(folder).eval()


def save_tiny_flux(folder: Path) -> Path:
    """A tiny FluxTransformer2DModel saved by diffusers (seeded)."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    config = {k: v for k, v in TINY_FLUX.items() if not k.startswith("_")}
    FluxTransformer2DModel(**config).save_pretrained(folder)
    return folder
