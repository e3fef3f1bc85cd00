"""One forward pass of a component, fed tensors of the shapes :mod:`.inputs` decided.

The same calls serve the estimate (:mod:`.trace`, on fake tensors) and ``bigmodel run
--forward`` (on real ones), so the peak measured there is that of the pass estimated here.
torch is imported here, lazily.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bigmodel_cli.runtime.inputs import FLOAT32, LONG, Shape

if TYPE_CHECKING:
    import torch


def make_inputs(
    shapes: Mapping[str, Shape], dtype: torch.dtype, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Tensors of ``shapes``: token ids as int64 zeros, timesteps at float32, the rest at
    ``dtype`` (random normal values: a forward pass over zeros may take other paths)."""
    import torch

    made = {}
    for name, shape in shapes.items():
        if name in LONG:
            made[name] = torch.zeros(shape, dtype=torch.long, device=device)
        elif name in FLOAT32:
            made[name] = torch.full(shape, 500.0 if name == "timestep" else 3.5, device=device)
        else:
            made[name] = torch.randn(shape, dtype=dtype, device=device)
    return made


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def forward(kind: str, model: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Run ``model`` once as its pipeline does (no gradients); returns its main output."""
    import torch

    with torch.no_grad():
        if kind == "vae":
            return model.decode(inputs["latent"]).sample
        if kind in ("text", "lm"):
            extra: dict[str, Any] = {}
            if kind == "lm":  # the prefill of generate(): the cache is counted apart
                extra["use_cache"] = False
                if _accepts(model.forward, "logits_to_keep"):
                    extra["logits_to_keep"] = 1
            ids = {k: v for k, v in inputs.items() if k in LONG}  # an encoder-decoder's too
            out = model(**ids, **extra)
            found = getattr(out, "logits", None)
            return found if found is not None else out[0]
        args: dict[str, Any] = dict(inputs)
        if kind in ("unet", "unet3d"):
            added = {k: args.pop(k) for k in ("text_embeds", "time_ids") if k in args}
            if added:
                args["added_cond_kwargs"] = added
        return model(**args).sample
