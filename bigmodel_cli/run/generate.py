"""``bigmodel run --generate PROMPT``: load with :func:`~.pipeline.load`, run end to end.

A pipeline's image is written to ``-o`` (PNG); a causal LM's text is returned. The report
gives the load and generation times and, per device, the peak memory beside the plan's
figure (``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on cpu).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bigmodel_cli.devices import DeviceKey, device_order, is_gpu, reset_gpu_peaks
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.json import write_atomically
from bigmodel_cli.placement.plan import Plan, PlanLike, as_plan
from bigmodel_cli.run.pipeline import generate, is_pipeline, load, release
from bigmodel_cli.runtime.library import Held, held

DEFAULT_IMAGE = "bigmodel-image.png"
SIDE_MULTIPLE = 8  # diffusers' pipelines refuse other image sides


@dataclass(frozen=True)
class DevicePeak:
    key: DeviceKey
    planned: int
    peak: int | None  # GPU: max allocated; cpu: the process's peak RSS; disk: None
    baseline: int | None = None  # cpu: the process's peak RSS before loading

    @property
    def added(self) -> int | None:
        """What the run added: the peak above the baseline (cpu), else the peak."""
        if self.peak is None or self.baseline is None:
            return self.peak
        return max(self.peak - self.baseline, 0)


@dataclass(frozen=True)
class GenerateReport:
    source: str
    strategy: str
    prompt: str
    load_seconds: float
    generate_seconds: float
    devices: tuple[DevicePeak, ...]
    image: str | None = None  # where the image was written
    text: str | None = None
    library_output: tuple[str, ...] = ()  # the libraries' warnings and log lines, held back


@dataclass(frozen=True)
class Generation:
    """How to generate: a pipeline's steps, seed and size; a causal LM's new tokens."""

    steps: int = 20
    seed: int = 0
    height: int | None = None
    width: int | None = None
    max_new_tokens: int = 32


def generate_run(
    source: str | os.PathLike[str] | None,
    *,
    plan: PlanLike,
    prompt: str,
    how: Generation = Generation(),
    output: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> GenerateReport:
    """Load SOURCE where ``plan`` says and generate from ``prompt``: an image written to
    ``output`` (default ``bigmodel-image.png``), or text. ``quiet`` silences the
    libraries' own progress bars, notices and warnings (the CLI asks for it).

    >>> how = Generation(steps=20, seed=1)
    >>> generate_run("sd15/", plan="plan.json", prompt="a cat", how=how)  # doctest: +SKIP
    """
    check_generation(how)
    the_plan = as_plan(plan)
    reset_gpu_peaks(the_plan.named_devices())
    baseline = _peak_rss()  # the process before loading: torch, this package
    obj = None
    try:  # the disk offload folder is removed on every way out, an interrupt included
        with held() if quiet else contextlib.nullcontext(Held()) as kept:
            began = time.perf_counter()
            obj = load(source, the_plan)
            loaded = time.perf_counter()
            if quiet and is_pipeline(obj):
                obj.set_progress_bar_config(disable=True)
            result = generate(obj, prompt, **asdict(how))
            done = time.perf_counter()
        image = text = None
        if is_pipeline(obj):
            image = str(Path(output if output is not None else DEFAULT_IMAGE))
            _save(result, Path(image))
        else:
            text = str(result)
    finally:
        if obj is not None:
            release(obj)
    return GenerateReport(
        source=str(source if source is not None else os.getcwd()),
        strategy=the_plan.strategy,
        prompt=prompt,
        load_seconds=loaded - began,
        generate_seconds=done - loaded,
        devices=_peaks(the_plan, baseline),
        image=image,
        text=text,
        library_output=tuple(kept.lines),
    )


def check_generation(how: Generation) -> None:
    """Every count in ``how`` a positive whole number and the image sides multiples of 8
    (what diffusers' pipelines accept), or an error naming the argument."""
    for name in ("steps", "height", "width", "max_new_tokens"):
        value = getattr(how, name)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise BigmodelError(
                f"invalid {name} {value}: expected a positive whole number", argument=name
            )
        if name in ("height", "width") and value is not None and value % SIDE_MULTIPLE:
            raise BigmodelError(
                f"invalid {name} {value}: expected a multiple of {SIDE_MULTIPLE}", argument=name
            )


def _save(image: object, path: Path) -> None:
    """The image, written under a temporary name beside ``path`` and renamed into place."""
    save = getattr(image, "save", None)
    if save is None:
        raise BigmodelError("the pipeline gave no image to save", path)
    try:
        write_atomically(path, save)
    except (OSError, ValueError) as exc:
        raise BigmodelError(f"cannot write the image ({exc})", path) from None


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _peaks(plan: Plan, baseline: int) -> tuple[DevicePeak, ...]:
    import torch

    peaks = []
    for d in sorted(plan.devices, key=lambda d: device_order(d.key)):
        peak: int | None = None
        if is_gpu(d.key):
            peak = int(torch.cuda.max_memory_allocated(d.key))
        elif d.key == "cpu":
            peaks.append(DevicePeak(d.key, d.planned, _peak_rss(), baseline))
            continue
        peaks.append(DevicePeak(d.key, d.planned, peak))
    return tuple(peaks)
