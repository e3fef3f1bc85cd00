"""What ``run_plan``, ``run_world`` and ``generate`` are asked: one frozen record each.

As :class:`~bigmodel_cli.placement.request.PlanRequest` is for ``make_plan``: each verb takes
its record (``request=``) or the record's fields as keywords (``**options``), never both.
Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from bigmodel_cli import arguments as a
from bigmodel_cli.torchrun import READERS

if TYPE_CHECKING:
    from bigmodel_cli.progress import Progress
    from bigmodel_cli.run.pipeline_stage import PipelineRequest
    from bigmodel_cli.sizes import DTypeLike

R = TypeVar("R")


@dataclass(frozen=True)
class RunPlanRequest:
    """How :func:`~bigmodel_cli.run.run_plan` carries a plan out: the ``dtype`` to load as,
    ``verify`` against the files, a ``forward`` pass, ``require_fit`` (refuse a plan that
    this machine cannot hold), the checkpoint's ``variant``, ``offline``, ``copy`` (read
    cpu tensors into memory instead of mapping them), and a ``progress`` bar."""

    dtype: DTypeLike | None = None
    verify: bool = False
    forward: bool = False
    require_fit: bool = False
    variant: str | None = None
    offline: bool = False
    copy: bool = False
    progress: Progress | None = None


class RunPlanOptions(TypedDict, total=False):
    dtype: DTypeLike | None
    verify: bool
    forward: bool
    require_fit: bool
    variant: str | None
    offline: bool
    copy: bool
    progress: Progress | None


@dataclass(frozen=True)
class WorldRequest:
    """How :func:`~bigmodel_cli.run.distributed.run_world` runs a rank: ``dtype``,
    ``verify``, its ``reader`` (``pread`` or ``dcp``), a pipeline ``stage`` to run, the
    ``variant``, ``offline`` and a ``progress`` bar (shown on rank 0)."""

    dtype: DTypeLike | None = None
    verify: bool = False
    reader: str = READERS[0]
    stage: PipelineRequest | None = None
    variant: str | None = None
    offline: bool = False
    progress: Progress | None = None


class WorldOptions(TypedDict, total=False):
    dtype: DTypeLike | None
    verify: bool
    reader: str
    stage: PipelineRequest | None
    variant: str | None
    offline: bool
    progress: Progress | None


@dataclass(frozen=True)
class GenerateRequest:
    """How :func:`~bigmodel_cli.run.pipeline.generate` runs: a pipeline's ``steps``, ``seed``,
    ``height``, ``width`` and ``output_type``; a causal LM's ``max_new_tokens`` from a
    prompt or from ``input_ids``."""

    steps: int = 20
    seed: int = 0
    height: int | None = None
    width: int | None = None
    max_new_tokens: int = 32
    input_ids: Any = None
    output_type: str = "pil"


class GenerateOptions(TypedDict, total=False):
    steps: int
    seed: int
    height: int | None
    width: int | None
    max_new_tokens: int
    input_ids: Any
    output_type: str


def as_record(cls: type[R], request: R | None, options: Any) -> R:
    """``request``, or a ``cls`` made of the keywords ``options`` (never both); each field's
    type checked (``dtype``: where it is parsed), naming the argument that is wrong."""
    made = a.record_or_keywords(cls, request, options)
    a.check_fields(made, _CHECKS.get(cls, {}))
    return made


_FLAGS = ("verify", "offline")
_CHECKS: dict[type, dict[str, a.Check]] = {
    RunPlanRequest: {
        **dict.fromkeys((*_FLAGS, "forward", "require_fit", "copy"), a.flag),
        "variant": a.text,
        "progress": a.progress,
    },
    WorldRequest: {
        **dict.fromkeys(_FLAGS, a.flag),
        "variant": a.text,
        "reader": a.text,
        "progress": a.progress,
    },
    GenerateRequest: {
        **dict.fromkeys(("steps", "max_new_tokens"), a.whole),
        **dict.fromkeys(("height", "width"), a.count),
        "seed": a.seed,
        "output_type": a.text,
    },
}
