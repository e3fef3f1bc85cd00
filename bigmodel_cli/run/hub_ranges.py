"""A rank's byte ranges straight from the Hugging Face Hub, for a repo id not in the cache.

The plan was made from the repo's headers (a mirror: JSON files and safetensors headers,
see :mod:`bigmodel_cli.checkpoint.hub`); each rank reads the same mirror and then fetches
only its ranges with HTTP Range requests through huggingface_hub's client (``HF_ENDPOINT``,
``HF_TOKEN``, proxies), :data:`~bigmodel_cli.run.ranges.CHUNK` bytes per request. Nothing
is written to disk; the bytes are counted as they arrive.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.checkpoint.hub_http import fetch_bytes, hub_errors
from bigmodel_cli.progress import Progress
from bigmodel_cli.run.load import cast
from bigmodel_cli.run.ranges import CHUNK, Read, Share, tensor_of
from bigmodel_cli.sizes import DType

if TYPE_CHECKING:
    import torch


def is_remote(ckpt: Checkpoint) -> bool:
    """Read from the Hub's headers only: its tensor bytes are not on this machine."""
    return ckpt.repo is not None and ckpt.repo.remote


def read_hub(
    ckpt: Checkpoint, share: Share, device: str, target: DType | None, progress: Progress
) -> Read:
    """Every range of ``share`` by Range requests to the Hub, onto ``device``."""
    import torch
    from huggingface_hub import hf_hub_url

    assert ckpt.repo is not None
    repo_id, commit = ckpt.repo.repo_id, ckpt.repo.commit
    out = Read([])
    began = time.perf_counter()
    progress.start(share.nbytes, "fetching")
    for r in share.ranges:
        rel = os.path.relpath(r.file, ckpt.root)
        what = f"{repo_id}/{rel}"
        url = hf_hub_url(repo_id, rel, revision=commit)
        size = os.stat(r.file).st_size  # the mirror keeps each file's size (sparse)
        buf = torch.empty(r.length, dtype=torch.uint8)
        with hub_errors(repo_id, commit, what):
            for at in range(0, r.length, CHUNK):
                end = r.offset + min(at + CHUNK, r.length) - 1
                body = fetch_bytes(url, what, r.offset + at, end, size)
                buf[at : at + len(body)] = torch.frombuffer(bytearray(body), dtype=torch.uint8)
                out.bytes_read += len(body)
                progress.advance(len(body))
        moved: torch.Tensor = buf if device == "cpu" else buf.to(device)
        for info in r.tensors:
            tensor = tensor_of(moved, info.start - r.offset, info)
            out.tensors.append((info, cast(tensor, info.dtype, target)))
    out.seconds = time.perf_counter() - began
    return out
