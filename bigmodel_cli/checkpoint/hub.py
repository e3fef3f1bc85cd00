"""Plan before you download: a local *mirror* of a Hub repo's JSON files and headers.

``mirror("org/name")`` builds ``$HF_HOME/bigmodel/hub/org--name/<sha>[.<variant>]/name/``
holding the repo's small JSON files and, for each safetensors file the local reader
would use, a sparse file of the real size whose first bytes are the real header. The
local reader (``load_checkpoint``) then reads it unchanged: same components, tensors,
offsets and fingerprint as the downloaded snapshot, for a few kilobytes per file.

A mirror is immutable per commit: it is built in a temporary sibling and renamed into
place only when complete, so a failed run leaves nothing behind, and a second call
costs one request (resolving the revision), or none for a commit sha or offline.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from huggingface_hub import constants

from bigmodel_cli.checkpoint.hub_http import (
    fetch_header,
    fetch_small_file,
    file_url,
    hub_errors,
    model_info,
)
from bigmodel_cli.checkpoint.model_index import MODEL_INDEX, pipeline_entries
from bigmodel_cli.checkpoint.names import index_files, weight_files
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.files import (
    MAX_INDEX_BYTES,
    MAX_JSON_BYTES,
    read_small_file,
    safe_path,
)
from bigmodel_cli.formats.json import parse_json_object, read_json
from bigmodel_cli.formats.pickle import PICKLE
from bigmodel_cli.formats.safetensors import SAFETENSORS

WORKERS = 64  # requests in flight: each waits on the network, not the CPU
SKIPPED_JSON = frozenset({"tokenizer.json", "vocab.json"})
SMALL_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*/*", "scheduler/*")
MANIFEST = ".bigmodel-mirror.json"  # beside the mirrored folder: every file and its size
COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a commit sha, as the Hub names revisions
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Mirror:
    """A mirror folder ready for ``load_checkpoint(path)``."""

    repo_id: str
    commit: str
    path: Path
    headers_fetched: int
    bytes_fetched: int
    repaired: str | None = None  # why a mirror found damaged was built again


def mirror(
    repo_id: str,
    *,
    revision: str = "main",
    variant: str | None = None,
    offline: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Mirror:
    """The mirror of ``repo_id`` at ``revision``, built from the Hub when not yet here."""
    root = _repo_root(repo_id, cache_dir)
    name = repo_id.rsplit("/", 1)[-1]
    offline = offline or _offline_env()
    files: dict[str, int] | None = None
    if offline:
        commit = _offline_commit(repo_id, revision, root)
    elif COMMIT.match(revision) or _has_mirrors(root):
        commit = _resolve(repo_id, revision)  # one light request: the mirror may be here
    else:
        commit, files = _list_files(repo_id, revision)  # nothing here: resolve and list at once
    folder = root / (commit if variant is None else f"{commit}.{variant}")
    damage = mirror_damage(folder) if folder.is_dir() else None
    if folder.is_dir() and damage is None:
        return Mirror(repo_id, commit, folder / name, 0, 0)
    if damage is not None and offline:
        raise BigmodelError(
            f"the mirror at {folder} is damaged ({damage}); run it once online to rebuild it",
            repo_id,
        )
    if offline:
        raise BigmodelError(
            f"offline, and no mirror of {repo_id} at {revision} ({commit[:12]}"
            f"{', variant ' + variant if variant else ''}) in {root}; run it once online",
            repo_id,
        )
    if files is None:
        files = _list_files(repo_id, commit)[1]
    try:
        if damage is not None:
            _discard(folder)
        headers, nbytes = _build(repo_id, commit, files, variant, folder, name)
        if not COMMIT.match(revision):
            _write_ref(root, revision, commit)
    except OSError as exc:  # a read-only HF_HOME, no permission, a full disk
        raise BigmodelError(
            f"cannot write the mirror in {root} ({exc.strerror})", repo_id
        ) from None
    repaired = None if damage is None else f"the mirror was damaged ({damage}) and rebuilt"
    return Mirror(repo_id, commit, folder / name, headers, nbytes, repaired)


def download_plan_files(repo_id: str, commit: str, files: list[str]) -> Path:
    """Download exactly ``files`` (repo-relative) plus the small JSON / config / tokenizer /
    scheduler files into the Hugging Face cache; the snapshot folder."""
    from huggingface_hub import snapshot_download  # its import costs a plan's start-up

    patterns = [glob.escape(f) for f in files] + list(SMALL_PATTERNS)
    with hub_errors(repo_id, commit):
        return Path(snapshot_download(repo_id, revision=commit, allow_patterns=patterns))


# -- where things are --------------------------------------------------------------------


def _repo_root(repo_id: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    if repo_id.count("/") != 1 or any(p in ("", ".", "..") for p in repo_id.split("/")):
        raise BigmodelError("not a Hugging Face repo id (org/name)", repo_id)
    base = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HOME)
    return base / "bigmodel" / "hub" / repo_id.replace("/", "--")


def _offline_env() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "").upper()
    return bool(constants.HF_HUB_OFFLINE) or value in ("1", "ON", "YES", "TRUE")


def _ref_file(base: Path, revision: str) -> Path:
    return base / "refs" / quote(revision, safe="")


def _offline_commit(repo_id: str, revision: str, root: Path) -> str:
    """``revision`` -> commit from this mirror's refs or the Hugging Face cache's refs."""
    if COMMIT.match(revision):
        return revision
    hf_repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    for ref in (_ref_file(root, revision), hf_repo / "refs" / revision):
        try:
            commit = read_small_file(ref, "ref", 1000).decode("ascii").strip()
        except (BigmodelError, UnicodeDecodeError):
            continue
        if COMMIT.match(commit):
            return commit
    raise BigmodelError(
        f"offline, and revision {revision!r} is neither in the Hugging Face cache "
        f"({hf_repo / 'refs' / revision}) nor read from the Hub before "
        f"({_ref_file(root, revision)}); run it once online or `hf download {repo_id}`",
        repo_id,
    )


def _write_ref(root: Path, revision: str, commit: str) -> None:
    ref = _ref_file(root, revision)
    ref.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=ref.parent)
    with os.fdopen(fd, "w") as f:
        f.write(commit)
    os.replace(tmp, ref)


# -- what the Hub says ---------------------------------------------------------------------


def _resolve(repo_id: str, revision: str) -> str:
    """The commit ``revision`` points to: one light request (none for a sha)."""
    if COMMIT.match(revision):
        return revision
    with hub_errors(repo_id, revision):
        return _commit(model_info(repo_id, revision, files=False), repo_id, revision)


def _commit(info: dict[str, Any], repo_id: str, revision: str) -> str:
    sha = info.get("sha")
    if not isinstance(sha, str) or not COMMIT.match(sha):
        raise BigmodelError(f"the Hub gave no commit for revision {revision!r}", repo_id)
    return sha


def _has_mirrors(root: Path) -> bool:
    return root.is_dir() and any(p.name != "refs" and p.is_dir() for p in root.iterdir())


def _list_files(repo_id: str, revision: str) -> tuple[str, dict[str, int]]:
    """The commit of ``revision``, and every file of the repo there with its real size
    (LFS size for LFS files)."""
    with hub_errors(repo_id, revision):
        info = model_info(repo_id, revision, files=True)
    commit = _commit(info, repo_id, revision)
    files: dict[str, int] = {}
    for sibling in info.get("siblings") or []:
        entry = sibling if isinstance(sibling, dict) else {}
        name, lfs = entry.get("rfilename"), entry.get("lfs")
        size = lfs.get("size") if isinstance(lfs, dict) else entry.get("size")
        if not isinstance(name, str) or not isinstance(size, int) or size < 0:
            raise BigmodelError(f"the Hub listed no size for {name}", repo_id)
        files[name] = size
    return commit, files


# -- which files the local reader would use ------------------------------------------------


def _wanted_json(rel: str, size: int) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if not name.endswith(".json") or name in SKIPPED_JSON:
        return False
    return size <= (MAX_INDEX_BYTES if ".index." in name else MAX_JSON_BYTES)


def _component_folders(jsons: dict[str, bytes]) -> list[str]:
    """Folder prefixes that may hold a component: each pipeline entry, or the root."""
    if MODEL_INDEX not in jsons:
        return [""]
    try:
        spec = parse_json_object(jsons[MODEL_INDEX], Path(MODEL_INDEX), MODEL_INDEX)
    except BigmodelError:
        return []  # the local reader reports the broken file
    return [f"{name}/" for name in pipeline_entries(spec)]


def _weights_in(
    repo_id: str, prefix: str, names: list[str], jsons: dict[str, bytes], variant: str | None
) -> list[str]:
    """Weight files (folder-relative) the local reader takes from one folder, by the same
    name rules (:mod:`bigmodel_cli.checkpoint.names`) it applies to a local folder."""
    for fmt in (SAFETENSORS, PICKLE):
        indexes = index_files(names, variant, fmt.suffixes[0])
        if len(indexes) > 1:
            return []  # several index files: the local reader says so
        if not indexes:
            continue
        if not fmt.raw:
            raise _bin_only(repo_id, prefix)
        try:
            weight_map = json.loads(jsons[prefix + indexes[0]])["weight_map"]
            return sorted({f for f in weight_map.values() if isinstance(f, str) and f in names})
        except (KeyError, ValueError, TypeError, AttributeError):
            return []  # a broken index: the local reader reports it
    files = weight_files(names, variant, SAFETENSORS.suffixes)
    if files:
        return files
    if weight_files(names, variant, PICKLE.suffixes):
        raise _bin_only(repo_id, prefix)
    return []


def _bin_only(repo_id: str, prefix: str) -> BigmodelError:
    where = f" in {prefix.rstrip('/')}" if prefix else ""
    return BigmodelError(
        f"only .bin weights{where}: their sizes need the .bin files; "
        f"download them (hf download {repo_id})",
        repo_id,
    )


def needed_weights(
    repo_id: str, files: dict[str, int], jsons: dict[str, bytes], variant: str | None
) -> list[str]:
    """Repo-relative safetensors files whose headers the local reader would read."""
    needed: list[str] = []
    for prefix in _component_folders(jsons):
        names = [
            r[len(prefix) :] for r in files if r.startswith(prefix) and "/" not in r[len(prefix) :]
        ]
        found = _weights_in(repo_id, prefix, names, jsons, variant)
        needed.extend(prefix + n for n in found if n.endswith(".safetensors"))
    return needed


# -- building the mirror -------------------------------------------------------------------


def _parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``fn`` over ``items`` on a thread pool; the first failure cancels what is queued."""
    if not items:
        return []
    pool = ThreadPoolExecutor(min(WORKERS, len(items)), thread_name_prefix="bigmodel-hub")
    try:
        futures = [pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fetch_json(repo_id: str, commit: str, rel: str, size: int) -> bytes:
    url = file_url(repo_id, rel, commit)
    what = f"{repo_id}/{rel}"
    with hub_errors(repo_id, commit, what):
        return fetch_small_file(url, what, size)


def _target(repo_id: str, base: Path, rel: str) -> Path:
    """Where the Hub's file ``rel`` goes in the mirror: the safe-path rule, before any
    byte of it is asked for (a listing naming ``../x`` or ``/x`` is refused)."""
    return safe_path(base, rel, repo_id, "Hub file")


def _write(path: Path, data: bytes, size: int | None = None) -> None:
    """``data`` at ``path``; with ``size``, extended sparsely to ``size`` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        if size is not None:
            f.truncate(size)


def _build(
    repo_id: str,
    commit: str,
    files: dict[str, int],
    variant: str | None,
    folder: Path,
    name: str,
) -> tuple[int, int]:
    """Fill a temporary sibling of ``folder``, then rename it into place. Returns the
    number of headers fetched and the bytes received."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        base = tmp / name
        json_names = sorted(r for r, s in files.items() if _wanted_json(r, s))
        paths = {rel: _target(repo_id, base, rel) for rel in json_names}
        bodies = _parallel(lambda r: _fetch_json(repo_id, commit, r, files[r]), json_names)
        jsons = dict(zip(json_names, bodies, strict=True))
        for rel, data in jsons.items():
            _write(paths[rel], data)
        weights = needed_weights(repo_id, files, jsons, variant)
        paths = {rel: _target(repo_id, base, rel) for rel in weights}
        headers = _parallel(lambda r: fetch_header(repo_id, commit, r, files[r]), weights)
        for rel, (raw, _) in zip(weights, headers, strict=True):
            _write(paths[rel], raw, files[rel])
        base.mkdir(parents=True, exist_ok=True)
        sizes = {rel: len(data) for rel, data in jsons.items()} | {r: files[r] for r in weights}
        _write(tmp / MANIFEST, json.dumps({"name": name, "files": sizes}).encode())
        nbytes = sum(map(len, bodies)) + sum(n for _, n in headers)
        _publish(tmp, folder)
        return len(weights), nbytes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mirror_damage(folder: Path) -> str | None:
    """What is missing from a mirror on disk (its manifest lists every file it was built
    with, and their sizes), or None when all is there."""
    try:
        manifest = read_json(folder / MANIFEST, "mirror manifest", MAX_INDEX_BYTES)
    except BigmodelError as exc:
        return exc.reason
    name, sizes = manifest.get("name"), manifest.get("files")
    if not isinstance(name, str) or not isinstance(sizes, dict):
        return "its manifest lists no files"
    base = folder / name
    for rel, size in sizes.items():
        try:
            found = os.lstat(safe_path(base, rel, folder / MANIFEST, "file"))
        except (BigmodelError, OSError):
            return f"{rel} is missing"
        if not stat.S_ISREG(found.st_mode) or found.st_size != size:
            return f"{rel} is not the file it was ({size} bytes)"
    return None


def _discard(folder: Path) -> None:
    """Move a damaged mirror out of the way (one rename), then remove it."""
    old = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-damaged-", dir=folder.parent))
    os.rename(folder, old / folder.name)
    shutil.rmtree(old, ignore_errors=True)


def _publish(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; another process having done it first is fine."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
