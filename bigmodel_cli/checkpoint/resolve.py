"""SOURCE -> Checkpoint: a local path, a repo id in the Hugging Face cache, or on the Hub.

A repo id (``org/name`` that is not a local path) is read from its cached snapshot when
that holds every file the reader needs; otherwise, where ``remote`` allows (``inspect``
and ``plan``), from a header mirror of the Hub (:mod:`.hub`): the same components,
tensors and fingerprint as the downloaded snapshot, for a few kilobytes per file.
``run`` never reads a mirror: :func:`fetch_for_plan` downloads the files first.

A command can have a repo's mirror made ahead, on a thread, while it does the rest of its
start-up (:func:`mirror_ahead`: ``plan`` detecting the GPUs imports torch meanwhile).
huggingface_hub is imported only where a request is sent (its HTTP client), or where a
cached snapshot exists (``snapshot_download``).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bigmodel_cli import arguments as a
from bigmodel_cli.checkpoint.checkpoint import Checkpoint, HubSource
from bigmodel_cli.checkpoint.discover import read_path
from bigmodel_cli.checkpoint.names import hf_cache_folder
from bigmodel_cli.checkpoint.training import read_training_path
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import path_errors

if TYPE_CHECKING:
    from bigmodel_cli.checkpoint.hub import Mirror

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
Ahead = tuple[str, str, str | None]  # repo id, revision, variant
_AHEAD: dict[Ahead, Future[Mirror | None]] = {}


def is_repo_id(source: str | os.PathLike[str] | None) -> bool:
    """``org/name`` that is not a local path."""
    return source is not None and not os.path.lexists(source) and bool(REPO_ID.match(str(source)))


def load_checkpoint(
    source: str | os.PathLike[str] | None,
    variant: str | None = None,
    *,
    revision: str | None = None,
    offline: bool = False,
    remote: bool = True,
    include_optimizer: bool = False,
) -> Checkpoint:
    """Resolve ``source``: a path, a Hugging Face repo id (``revision``: a branch, tag or
    commit; default ``main``), or None for the current folder. With ``remote``, a repo id
    that is not fully cached is read from the Hub's headers; ``offline`` never asks.
    ``include_optimizer``: a training checkpoint's optimizer state too. Each argument of
    another type is refused, naming it (the API's verbs all read SOURCE here)."""
    a.path(source, "source")
    a.text(variant, "variant")
    a.text(revision, "revision")
    a.flag(offline, "offline")
    a.flag(include_optimizer, "include_optimizer")
    with path_errors(source):
        if is_repo_id(source):
            return _from_repo(str(source), variant, revision, offline, remote)
        path = Path(source) if source is not None else Path.cwd()
        training = read_training_path(path, include_optimizer)
        if training is not None:
            return training
        return read_path(path, path.resolve().name or "model", variant)


@contextmanager
def mirror_ahead(
    source: str | os.PathLike[str] | None,
    revision: str | None = None,
    variant: str | None = None,
    offline: bool = False,
    *,
    when: bool = True,
) -> Iterator[None]:
    """While the block runs, a repo id that the Hugging Face cache lacks has its mirror
    read from the Hub on a thread (:func:`~.hub.mirror`), which :func:`load_checkpoint`
    of the same repo, revision and variant then takes; anything else: nothing.

    ``when``: the block has slow work to do before it reads the checkpoint (``plan``
    without ``--max-memory`` imports torch to find the GPUs, 0.3 s to seconds), else
    there is nothing to overlap. An error in the block waits for the thread, so that no
    half-built mirror is left behind (Ctrl-C does not wait)."""
    if offline or not when or not is_repo_id(source):
        yield
        return
    key = (str(source), revision or "main", variant)
    made: Future[Mirror | None] = Future()
    _AHEAD[key] = made
    threading.Thread(target=_make_ahead, args=(key, made), name="bigmodel-hub", daemon=True).start()
    try:
        yield
    except Exception:
        wait([made])
        raise
    finally:
        _AHEAD.pop(key, None)


def _make_ahead(key: Ahead, made: Future[Mirror | None]) -> None:
    repo_id, revision, variant = key
    try:
        if hf_cache_folder(repo_id).is_dir():  # a snapshot may serve: load_checkpoint decides
            made.set_result(None)
            return
        from bigmodel_cli.checkpoint.hub import mirror

        made.set_result(mirror(repo_id, revision=revision, variant=variant))
    except BigmodelError as exc:  # raised where the command takes it
        made.set_exception(exc)
    except BaseException:  # anything else: the command reads the Hub itself, and shows it
        made.set_result(None)


def _from_repo(
    repo_id: str, variant: str | None, revision: str | None, offline: bool, remote: bool
) -> Checkpoint:
    name = repo_id.rsplit("/", 1)[1]
    snapshot = _cached_snapshot(repo_id, revision)
    if snapshot is not None:
        try:
            ckpt = read_path(snapshot, name, variant)
            return replace(ckpt, repo=HubSource(repo_id, snapshot.name))
        except BigmodelError:
            if not remote:
                raise
    if not remote:
        raise BigmodelError(
            "not a local path, and not in the Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); "
            f"fetch it first with `hf download {repo_id}`",
            repo_id,
        )
    from bigmodel_cli.checkpoint.hub import mirror

    revision = revision or "main"
    ahead = None if offline else _AHEAD.get((repo_id, revision, variant))
    try:
        found = (ahead and ahead.result()) or mirror(
            repo_id, revision=revision, variant=variant, offline=offline
        )
    except BigmodelError as exc:  # a mistyped folder reads as a repo id: say both
        raise BigmodelError(
            f"no such local path, and as a Hub repo: {exc.reason}", exc.path
        ) from None
    ckpt = read_path(found.path, name, variant)
    hub = HubSource(
        repo_id, found.commit, True, found.headers_fetched, found.bytes_fetched, found.repaired
    )
    return replace(ckpt, repo=hub)


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    if not hf_cache_folder(repo_id).is_dir():
        return None  # the common case for a Hub read, without importing snapshot_download
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as exc:
        # huggingface_hub >= 2 says so when some files are missing; the reader then
        # judges whether the ones it needs (this variant, safetensors) are there
        partial = getattr(exc, "snapshot_path", None)
        return Path(partial) if partial is not None and Path(partial).is_dir() else None


def fetch_for_plan(repo_id: str, commit: str, variant: str | None) -> Path:
    """Download the files a plan of ``repo_id`` at ``commit`` uses (the weights the reader
    takes, not other variants or ``.bin`` twins, plus the small files) into the Hugging
    Face cache, with its progress bars; the snapshot folder."""
    from bigmodel_cli.checkpoint.hub import COMMIT, download_plan_files, mirror

    if not COMMIT.match(commit):
        raise BigmodelError(f"the plan names no commit of {repo_id}; re-run bigmodel plan")
    found = mirror(repo_id, revision=commit, variant=variant)
    ckpt = read_path(found.path, repo_id.rsplit("/", 1)[1], variant)
    files = [os.path.relpath(f, found.path) for c in ckpt.components for f in c.files]
    return download_plan_files(repo_id, commit, files)
