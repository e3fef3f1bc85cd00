"""Activation estimates against torch's own measurement: the README's accuracy figures.

For each component of the checked-in tiny pipeline (UNet, VAE decode, CLIP text
encoder), a tiny Flux-style transformer and the tiny Llama, at three shapes each:
`bigmodel plan`'s activation estimate (traced on fake tensors, nothing run) against the
peak of the same forward pass run on the CPU with the plan's `inputs`, counted from
torch.profiler's allocator events (tests/helpers/activations.py, not bigmodel's own
run/peak.py). Target: the README's bounds per component (UNet, CLIP and Flux within 2%, a
Llama prefill 1-6% over, the VAE decode 0-15% under); a row outside them fails the run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigmodel_cli.placement import make_plan  # noqa: E402
from tests.helpers.activations import (  # noqa: E402
    BOUNDS,
    FLUX_SHAPES,
    LLAMA_SHAPES,
    PIPELINE_COMPONENTS,
    PIPELINE_SHAPES,
    load,
    measured,
    off,
    save_tiny_flux,
    within,
)

PIPELINE = ROOT / "fixtures" / "tiny-pipeline"
LLAMA = ROOT / "fixtures" / "tiny-llama"


def _row(name: str, shape: str, kind: str, estimate: int | None, peak: int) -> bool:
    ok = within(kind, estimate, peak)
    low, high = BOUNDS[kind]
    print(
        f"| {name} | {shape} | {estimate or 0:,} | {peak:,} | {off(estimate, peak):+.2%} | "
        f"{low:+.0%}..{high:+.0%}: {'met' if ok else 'MISSED'} |"
    )
    return ok


def main() -> int:
    print("| component | batch, shape, context | estimate (B) | profiled peak (B) | off | target |")
    print("|---|---|---:|---:|---:|---|")
    ok = True
    for component, library, class_name, kind in PIPELINE_COMPONENTS:
        model = load(library, class_name, PIPELINE / component)
        for batch, side, context in PIPELINE_SHAPES:
            plan = make_plan(
                PIPELINE,
                max_memory="cpu=1GB",
                batch=batch,
                height=side,
                width=side,
                context=context,
            )
            doc = plan.to_json()["components"][component]
            peak = measured(model, kind, doc["inputs"])
            ok &= _row(
                component, f"{batch}, {side}x{side}, {context}", kind, doc["activations"], peak
            )
    with tempfile.TemporaryDirectory() as tmp:
        flux = save_tiny_flux(Path(tmp) / "transformer")
        model = load("diffusers", "FluxTransformer2DModel", flux)
        for batch, side, context in FLUX_SHAPES:
            plan = make_plan(
                flux, max_memory="cpu=1GB", batch=batch, height=side, width=side, context=context
            )
            doc = plan.to_json()["components"]["transformer"]
            peak = measured(model, "flux", doc["inputs"])
            ok &= _row(
                "flux", f"{batch}, {side}x{side}, {context}", "flux", doc["activations"], peak
            )
    model = load("transformers", "LlamaForCausalLM", LLAMA)
    for batch, context in LLAMA_SHAPES:
        plan = make_plan(LLAMA, max_memory="cpu=1GB", batch=batch, context=context)
        doc = plan.to_json()["components"]["tiny-llama"]
        peak = measured(model, "lm", doc["inputs"])
        ok &= _row("llama prefill", f"{batch}, -, {context}", "lm", doc["activations"], peak)
    print(f"\nevery estimate within the README's bounds: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
