"""The checkpoint stage: a SOURCE becomes components of tensors in files.

Every SOURCE form of the spec (a file, a sharded folder, a diffusers pipeline, legacy
pickle, a repo id in the Hugging Face cache) ends up as a :class:`Checkpoint`
(:mod:`.checkpoint`; read by :mod:`.discover` and :mod:`.resolve`); its blocks are grouped
from tensor names (:mod:`.blocks`); file names follow Hugging Face's rules (:mod:`.names`);
``inspect`` reports a summary (:mod:`.summary`). Nothing here reads tensor data.
"""

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
    path = None if source is None else os.fspath(source)
    ckpt = load_checkpoint(
        path, variant, revision=revision, offline=offline, include_optimizer=include_optimizer
    )
    return summarize(ckpt, target)
