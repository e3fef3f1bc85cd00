"""What a run needs besides weights: the run's shape, quantized weights, KV caches and
activations, per component (``bigmodel plan --batch ... --quantize ...``).

Pure decisions: :mod:`.shape` (the flags), :mod:`.inputs` (each component's inputs at that
shape, from configs), :mod:`.kv` (KV cache from ``config.json``), :mod:`.quantize` (bytes
the quantizers allocate). Then :mod:`.trace` builds a component on the meta device with
its own library and counts one forward pass on fake tensors (torch and the libraries are
imported there only); :mod:`.calls` is that pass, shared with ``run --forward``;
:mod:`.estimate` puts it together for a checkpoint.
"""

from __future__ import annotations

import importlib
from typing import Any

from bigmodel_cli.runtime.shape import METHODS, RunShape, parse_quantize

__all__ = ["METHODS", "ComponentRuntime", "Estimate", "RunShape", "estimate", "parse_quantize"]
_LAZY = ("ComponentRuntime", "Estimate", "estimate")  # :mod:`.estimate`, on first use


def __getattr__(name: str) -> Any:
    """The estimate's names, imported on first use: the CLI's start-up (which reads
    :mod:`.shape` through the plan file) does not pay for the estimator."""
    if name not in _LAZY:
        raise AttributeError(f"module 'bigmodel_cli.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module("bigmodel_cli.runtime.estimate"), name)
