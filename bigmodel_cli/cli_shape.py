"""The run-shape options of ``bigmodel plan`` (``--batch`` ... ``--double-quant``), kept
here so that :mod:`bigmodel_cli.cli` only names them. Given, a run-shape option makes the
plan count activations and the KV cache; ``--quantize`` changes the weights' bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

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

NAMES: tuple[str, ...] = ("counted", "batch", "height", "width", "frames", "context")
NAMES += ("quantize", "no_quantize", "double_quant")


def run_shape(values: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~bigmodel_cli.placement.PlanRequest`'s run-shape fields from the plan
    command's parameters."""
    found = {name: values[name] for name in NAMES}
    found["no_quantize"] = tuple(found["no_quantize"] or ())
    return found
