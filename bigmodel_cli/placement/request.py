"""What ``bigmodel plan`` (and ``bm.plan``) is asked: one record, checked once.

:class:`PlanRequest` gathers the devices and their budget (``max_memory``, ``reserve``),
the strategy, the dtype, the checkpoint's revision, the torchrun ranks and the run's shape;
:func:`bigmodel_cli.placement.make_plan` takes it (or its fields as keywords). Pure data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from bigmodel_cli import arguments as a
from bigmodel_cli.errors import UsageError
from bigmodel_cli.placement.strategies import RANKS_STRATEGY, STRATEGIES, default_strategy
from bigmodel_cli.runtime.kv import AUTO, cache_dtype
from bigmodel_cli.runtime.shape import RunShape, parse_quantize
from bigmodel_cli.sizes import DType, as_target_dtype

if TYPE_CHECKING:
    from bigmodel_cli.checkpoint import Checkpoint
    from bigmodel_cli.devices import MaxMemory
    from bigmodel_cli.sizes import DTypeLike


@dataclass(frozen=True)
class PlanRequest:
    """A plan's question. ``max_memory``: ``"0=8GB,1=8GB,cpu=32GB"`` (None: the devices
    of this machine); ``nodes`` / ``procs_per_node``: plan over torchrun ranks, with
    ``max_memory`` one rank's budget; the run's shape (``counted`` or any of ``batch`` ...
    ``context``) makes the plan count activations and KV caches; ``quantize`` (``"nf4"``,
    ``"unet=int8,..."``) sizes linear weights as quantized."""

    max_memory: MaxMemory | None = None
    reserve: str | int | None = None
    strategy: str | None = None
    dtype: DTypeLike | None = None
    no_split: tuple[str, ...] = ()
    variant: str | None = None
    revision: str | None = None
    offline: bool = False
    nodes: int | None = None
    procs_per_node: int | None = None
    counted: bool = False
    batch: int | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    context: int | None = None
    quantize: str | None = None
    no_quantize: tuple[str, ...] = ()
    double_quant: bool = False
    kv_dtype: str | None = None  # the KV cache's dtype (runtime.kv.KV_DTYPES; None: auto)
    encoder_length: int | None = None  # an encoder-decoder's encoder tokens (None: context)

    @property
    def over_ranks(self) -> bool:
        given = self.nodes is not None or self.procs_per_node is not None
        return given or (self.strategy is not None and STRATEGIES[self.strategy].over_ranks)

    @property
    def shaped(self) -> bool:
        """A run-shape argument was given: activations and KV caches are counted."""
        sizes = (self.batch, self.height, self.width, self.frames, self.context)
        kv = (self.kv_dtype, self.encoder_length)
        return self.counted or any(v is not None for v in (*sizes, *kv))

    def chosen_strategy(self, kind: str | None) -> tuple[str, str | None]:
        """The strategy asked for; else the default for a checkpoint of ``kind`` (over
        ranks: the ranks' one), with the reason it was chosen."""
        if self.strategy is not None:
            return self.strategy, None
        given = self.nodes is not None or self.procs_per_node is not None
        chosen = STRATEGIES[RANKS_STRATEGY] if given else default_strategy(kind or "model")
        return chosen.name, chosen.default_reason

    def target(self) -> DType | None:
        return as_target_dtype(self.dtype)

    def shape(self, components: list[str]) -> RunShape:
        """The run's shape, ``quantize`` checked against the checkpoint's components."""
        return RunShape(
            self.shaped,
            1 if self.batch is None else self.batch,
            self.height,
            self.width,
            self.frames,
            self.context,
            parse_quantize(self.quantize, components),
            tuple(self.no_quantize),
            self.double_quant,
            cache_dtype(self.kv_dtype, AUTO) if self.kv_dtype else AUTO,
            self.encoder_length,
        )

    def load(self, source: str | os.PathLike[str] | None) -> Checkpoint:
        """The checkpoint to plan (default: the current folder), at ``variant``, ``revision``."""
        from bigmodel_cli.checkpoint import load_checkpoint

        path = None if source is None else os.fspath(source)
        return load_checkpoint(path, self.variant, revision=self.revision, offline=self.offline)

    def check(self) -> PlanRequest:
        """The request, or a :class:`UsageError` naming the argument that cannot be: each
        field's type first (the CLI's values and the API's pass here alike)."""
        a.check_fields(self, FIELD_CHECKS)
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise UsageError(
                f"unknown strategy {self.strategy!r}; expected one of: {', '.join(STRATEGIES)}",
                argument="strategy",
            )
        cache_dtype(self.kv_dtype, AUTO)  # an unknown name refused, naming kv_dtype
        if self.over_ranks and (self.shaped or self.quantize):
            raise UsageError(
                "run-shape arguments and quantize are not counted over torchrun ranks yet; "
                "plan the ranks by weights",
                argument="quantize",
            )
        return self


# Each field's type check (max_memory, reserve and dtype: checked where they are parsed).
FIELD_CHECKS: dict[str, a.Check] = dict.fromkeys(("strategy", "variant", "revision"), a.text)
FIELD_CHECKS |= dict.fromkeys(("quantize", "kv_dtype"), a.text)
FIELD_CHECKS |= dict.fromkeys(("offline", "counted", "double_quant"), a.flag)
FIELD_CHECKS |= dict.fromkeys(("no_split", "no_quantize"), a.names)
FIELD_CHECKS |= dict.fromkeys(("nodes", "procs_per_node", "batch", "height", "width"), a.count)
FIELD_CHECKS |= dict.fromkeys(("frames", "context", "encoder_length"), a.count)


class PlanOptions(TypedDict, total=False):
    """:class:`PlanRequest`'s fields as ``make_plan``'s keywords (sequences as lists too)."""

    max_memory: MaxMemory | None
    reserve: str | int | None
    strategy: str | None
    dtype: DTypeLike | None
    no_split: tuple[str, ...] | list[str]
    variant: str | None
    revision: str | None
    offline: bool
    nodes: int | None
    procs_per_node: int | None
    counted: bool
    batch: int | None
    height: int | None
    width: int | None
    frames: int | None
    context: int | None
    quantize: str | None
    no_quantize: tuple[str, ...] | list[str]
    double_quant: bool
    kv_dtype: str | None
    encoder_length: int | None


def as_request(request: PlanRequest | None, options: PlanOptions) -> PlanRequest:
    """``request``, or one made of ``options`` (never both); checked. A list of names
    becomes a tuple (a bare str is refused, not taken as its characters)."""
    fixed = {k: a.names(v, k) if k in _NAMES else v for k, v in options.items()}
    return a.record_or_keywords(PlanRequest, request, fixed).check()


_NAMES = ("no_split", "no_quantize")
