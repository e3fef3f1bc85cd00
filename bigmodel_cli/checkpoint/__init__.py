"""The checkpoint stage: a SOURCE becomes components of tensors in files. Every SOURCE form
of the spec (a file, a sharded folder, a pipeline, legacy pickle, a training checkpoint, a
repo id) resolves (:mod:`.resolve`; :mod:`.discover`, :mod:`.training`, :mod:`.hub`) to a
:class:`Checkpoint` (:mod:`.checkpoint`); blocks come from tensor names (:mod:`.blocks`),
file names follow Hugging Face (:mod:`.names`); ``inspect`` reports a :mod:`.summary`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bigmodel_cli.checkpoint.checkpoint import Checkpoint, Component, HubSource, fingerprint
from bigmodel_cli.checkpoint.discover import find_component
from bigmodel_cli.checkpoint.resolve import is_repo_id, load_checkpoint
from bigmodel_cli.checkpoint.summary import CheckpointSummary, summarize
from bigmodel_cli.sizes import as_target_dtype

if TYPE_CHECKING:
    from bigmodel_cli.sizes import DTypeLike

__all__ = [
    "Checkpoint",
    "CheckpointSummary",
    "Component",
    "HubSource",
    "find_component",
    "fingerprint",
    "inspect",
    "is_repo_id",
    "load_checkpoint",
    "summarize",
]


def inspect(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: DTypeLike | None = None,
    variant: str | None = None,
    revision: str | None = None,
    offline: bool = False,
    include_optimizer: bool = False,
) -> CheckpointSummary:
    """What is in a checkpoint, from its headers alone: per component the layout, files,
    tensors, parameters, dtype mix, bytes (and at ``dtype``) and blocks. A training
    checkpoint: the model's tensors (``include_optimizer``: the optimizer's too).

    >>> summary = inspect("sdxl/", dtype="fp16")  # doctest: +SKIP
    >>> summary.total("bytes_at_dtype")  # doctest: +SKIP
    """
    target = as_target_dtype(dtype)
    ckpt = load_checkpoint(
        source, variant, revision=revision, offline=offline, include_optimizer=include_optimizer
    )
    return summarize(ckpt, target)
