"""A rank's byte ranges straight from the Hugging Face Hub, for a repo id not in the cache.

The plan was made from the repo's headers (a mirror: JSON files and safetensors headers,
see :mod:`bigmodel_cli.checkpoint.hub`); each rank reads the same mirror and then fetches
only its ranges with HTTP Range requests through huggingface_hub's client (``HF_ENDPOINT``,
``HF_TOKEN``, proxies), :data:`~bigmodel_cli.run.ranges.CHUNK` bytes per request. Nothing
is written to disk; the bytes are counted as they arrive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from bigmodel_cli.checkpoint import Checkpoint
from bigmodel_cli.checkpoint.hub_http import fetch_bytes, hub_errors
from bigmodel_cli.progress import Progress
from bigmodel_cli.run.gpu_reader import StagedReader
from bigmodel_cli.run.ranges import CHUNK, RangeRead, Read, Share, read_ranges
from bigmodel_cli.sizes import DType


def is_remote(ckpt: Checkpoint) -> bool:
    """Read from the Hub's headers only: its tensor bytes are not on this machine."""
    return ckpt.repo is not None and ckpt.repo.remote


class HubSource:
    """A file of a repo at a commit, read by Range requests (:data:`CHUNK` bytes each)."""

    piece = CHUNK

    def __init__(self, url: str, what: str, size: int) -> None:
        self.url, self.what, self.size = url, what, size

    def read_into(self, view: memoryview, offset: int) -> int:
        body = fetch_bytes(self.url, self.what, offset, offset + len(view) - 1, self.size)
        view[: len(body)] = body
        return len(body)


def read_hub(
    ckpt: Checkpoint,
    share: Share,
    device: str,
    target: DType | None,
    progress: Progress,
    reader: StagedReader | None = None,
) -> Read:
    """Every range of ``share`` by Range requests to the Hub, onto ``device``
    (:func:`~.ranges.read_ranges`; a GPU's through the staged ``reader``)."""
    from huggingface_hub import hf_hub_url

    repo = ckpt.repo
    assert repo is not None

    @contextmanager
    def source_of(r: RangeRead) -> Iterator[HubSource]:
        rel = os.path.relpath(r.file, ckpt.root)
        what = f"{repo.repo_id}/{rel}"
        url = hf_hub_url(repo.repo_id, rel, revision=repo.commit)
        size = os.stat(r.file).st_size  # the mirror keeps each file's size (sparse)
        with hub_errors(repo.repo_id, repo.commit, what):
            yield HubSource(url, what, size)

    progress.start(share.nbytes, "fetching")
    return read_ranges(share, source_of, device, target, progress, reader)
