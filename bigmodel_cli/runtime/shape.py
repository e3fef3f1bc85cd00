"""The run's shape: ``--batch``, ``--height``/``--width``, ``--frames``, ``--context``
(``--encoder-length``, ``--kv-dtype``), and how weights are quantized (``--quantize``,
``--no-quantize``, ``--double-quant``). Pure data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bigmodel_cli.errors import UsageError
from bigmodel_cli.runtime.kv import AUTO

METHODS = ("int8", "nf4", "fp4", "fp8")


@dataclass(frozen=True)
class RunShape:
    """What one run of the model looks like. ``counted``: activations and KV cache are
    estimated and counted by the planner (a run-shape flag or ``--runtime`` was given)."""

    counted: bool = False
    batch: int = 1
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    context: int | None = None
    quantize: Mapping[str, str] = field(default_factory=dict)  # component -> METHOD
    no_quantize: tuple[str, ...] = ()  # tensor-name prefixes kept at --dtype
    double_quant: bool = False
    kv_dtype: str = AUTO  # the KV cache's dtype (runtime.kv.KV_DTYPES)
    encoder_length: int | None = None  # an encoder-decoder's encoder tokens (default: context)

    def method(self, component: str) -> str | None:
        return self.quantize.get(component)


def parse_quantize(text: str | None, components: Sequence[str]) -> dict[str, str]:
    """``"nf4"`` -> every component; ``"unet=int8,text_encoder=nf4"`` -> those two. The
    sizes are checked by the request (:data:`~bigmodel_cli.arguments.MAX_RUN_COUNT`)."""
    if text is None or not text.strip():
        return {}
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if len(entries) == 1 and "=" not in entries[0]:
        return dict.fromkeys(components, _method(entries[0], text))
    found: dict[str, str] = {}
    for entry in entries:
        name, sep, method = (p.strip() for p in entry.partition("="))
        if not sep:
            raise UsageError(
                f"invalid quantize {text!r}: give one METHOD or COMPONENT=METHOD,... "
                f"(METHOD one of {', '.join(METHODS)})",
                argument="quantize",
            )
        if name in found:
            raise UsageError(
                f"invalid quantize {text!r}: component {name!r} is named twice",
                argument="quantize",
            )
        if name not in components:
            raise UsageError(
                f"invalid quantize {text!r}: no component {name!r} "
                f"(components: {', '.join(components)})",
                argument="quantize",
            )
        found[name] = _method(method, text)
    return found


def _method(method: str, text: str) -> str:
    if method.lower() not in METHODS:
        raise UsageError(
            f"invalid quantize {text!r}: unknown method {method!r} "
            f"(expected one of {', '.join(METHODS)})",
            argument="quantize",
        )
    return method.lower()
