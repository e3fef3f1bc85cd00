"""The run-shape options of ``bigmodel plan`` (``--batch`` ... ``--double-quant``), kept
here so that :mod:`bigmodel_cli.cli` only names them. Given, a run-shape option makes the
plan count activations and the KV cache; ``--quantize`` changes the weights' bytes.
Also the plan ``bigmodel run`` makes when given no ``--plan``."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from bigmodel_cli.placement.plan import Plan
    from bigmodel_cli.sizes import DType

Batch = Annotated[
    int | None, typer.Option("--batch", help="Images or sequences per run (default 1).")
]
Height = Annotated[
    int | None, typer.Option("--height", help="Image height, pixels (default: the configs').")
]
Width = Annotated[
    int | None, typer.Option("--width", help="Image width, pixels (default: the configs').")
]
Frames = Annotated[int | None, typer.Option("--frames", help="Video frames (video models).")]
Context = Annotated[
    int | None,
    typer.Option("--context", help="Text models: prompt plus generated tokens (KV cache)."),
]
Counted = Annotated[
    bool,
    typer.Option("--runtime", help="Count activations and KV cache at the default run shape."),
]
Quantize = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="Size linear-layer weights quantized: int8, nf4, fp4 or fp8, for every "
        "component or per component (unet=nf4,text_encoder=int8).",
    ),
]
NoQuantize = Annotated[
    list[str] | None,
    typer.Option("--no-quantize", help="A tensor prefix --quantize leaves; repeatable."),
]
DoubleQuant = Annotated[
    bool, typer.Option("--double-quant", help="nf4/fp4: quantize their scales too.")
]

KVDType = Annotated[
    str | None,
    typer.Option(
        "--kv-dtype",
        help="Text models: the KV cache's dtype: auto (the model's), fp16, bf16, or "
        "transformers' quantized cache fp8, int8, int4 (full-attention models).",
    ),
]
EncoderLength = Annotated[
    int | None,
    typer.Option(
        "--encoder-length",
        help="Encoder-decoders (T5, BART): tokens the encoder reads (default: --context).",
    ),
]

NAMES: tuple[str, ...] = ("counted", "batch", "height", "width", "frames", "context")
NAMES += ("quantize", "no_quantize", "double_quant", "kv_dtype", "encoder_length")


def run_shape(values: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~bigmodel_cli.placement.PlanRequest`'s run-shape fields from the plan
    command's parameters."""
    found = {name: values[name] for name in NAMES}
    found["no_quantize"] = tuple(found["no_quantize"] or ())
    return found


PLAN_HELP = (
    "A plan written by bigmodel plan -o. Default: one made now for the detected devices, "
    "as `bigmodel plan SOURCE` makes it (under torchrun: plan.json)."
)


def detected_plan(
    source: str | None, dtype: DType | None, variant: str | None, offline: bool
) -> Plan:
    """``run`` without ``--plan``: the plan ``bigmodel plan SOURCE`` makes for the detected
    devices, said in one line on stderr."""
    from bigmodel_cli.placement import make_plan

    made = make_plan(source, dtype=dtype, variant=variant, offline=offline)
    devices = ", ".join(d.label for d in made.devices)
    sys.stderr.write(
        f"bigmodel: no --plan: planned for the detected devices ({devices}) with the "
        f"{made.strategy} strategy, as `bigmodel plan SOURCE` does\n"
    )
    return made
