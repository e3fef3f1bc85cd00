"""Bounded HTTP reads from the Hugging Face Hub, through huggingface_hub's own client.

Every request goes through ``huggingface_hub.get_session()`` (its proxies, offline
switch, request ids), with ``build_hf_headers()`` (HF_TOKEN, user agent), to the URLs
huggingface_hub would ask (``HfApi.model_info``'s and ``hf_hub_url``'s, from its
``constants``: HF_ENDPOINT). Only its HTTP client is imported (not ``HfApi`` nor
``file_download``, which cost more start-up than the whole request). The shared client
has no timeout of its own, so each call passes ``constants.HF_HUB_DOWNLOAD_TIMEOUT``
(10 s unless set). A busy Hub (HTTP 429 or a 5xx) is asked again after a wait
(:func:`retrying`). Every failure becomes one :class:`BigmodelError` line naming the
repo or file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from huggingface_hub import constants, get_session
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

from bigmodel_cli import __version__
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.formats.safetensors import header_length, parse_header

try:  # huggingface_hub 2.x's client; 1.x uses httpx, with the same exception names
    import httpx2 as http
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as http  # type: ignore[no-redef]

FIRST_RANGE = 1 << 16
LOGIN = "log in with `hf auth login` or set HF_TOKEN"
BUSY = frozenset({429, 500, 502, 503, 504})  # answers worth asking again
LONGEST_WAIT = 10.0  # seconds, whatever Retry-After says
T = TypeVar("T")


def retries() -> int:
    """How many times a busy answer is asked again: ``BIGMODEL_HUB_RETRIES``, else 4."""
    given = os.environ.get("BIGMODEL_HUB_RETRIES", "")
    return int(given) if given.isdigit() else 4


def retrying(call: Callable[[], T]) -> T:
    """``call()``; when the Hub answers 429 or a 5xx, again after ``Retry-After`` seconds
    (at most :data:`LONGEST_WAIT`) or 0.5, 1, 2, 4 s, :func:`retries` times at most. A
    timeout or a dropped connection is not retried (each would cost a whole timeout)."""
    attempt = 0
    while True:
        try:
            return call()
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status not in BUSY or attempt >= retries():
                raise
            time.sleep(_wait(exc.response, attempt))
            attempt += 1


def _wait(response: Any, attempt: int) -> float:
    given = response.headers.get("Retry-After", "") if response is not None else ""
    try:
        return min(max(float(given), 0.0), LONGEST_WAIT)
    except ValueError:  # absent, or an HTTP date
        return min(0.5 * 2**attempt, LONGEST_WAIT)


def timeout() -> float:
    """Seconds to wait on the Hub, read at call time (HF_HUB_DOWNLOAD_TIMEOUT)."""
    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def file_url(repo_id: str, rel: str, revision: str) -> str:
    """The download URL of ``rel`` in model repo ``repo_id``, as ``hf_hub_url`` makes it."""
    return constants.HUGGINGFACE_CO_URL_TEMPLATE.format(
        repo_id=repo_id, revision=quote(revision, safe=""), filename=quote(rel)
    )


def model_info(repo_id: str, revision: str, *, files: bool) -> dict[str, Any]:
    """The Hub's model info of ``repo_id`` at ``revision`` (the request and the answer of
    ``HfApi().model_info``): with ``files``, every file with its size; else the commit
    alone. Asked again while the Hub is busy."""
    url = f"{constants.ENDPOINT}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    params = {"blobs": True} if files else {"expand": ["sha"]}
    headers = build_hf_headers(library_name="bigmodel", library_version=__version__)

    def ask() -> Any:
        answer = get_session().get(url, headers=headers, params=params, timeout=timeout())
        hf_raise_for_status(answer)
        try:
            return answer.json()
        except ValueError:
            return None

    info = retrying(ask)
    if not isinstance(info, dict):
        raise BigmodelError("the Hub's model info is not a JSON object", repo_id)
    return info


def hub_headers() -> dict[str, str]:
    return build_hf_headers(library_name="bigmodel", library_version=__version__) | {
        "Accept-Encoding": "identity"
    }


@contextmanager
def hub_errors(repo_id: str, revision: str, what: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub / httpx2 failures into one-line errors about ``what``."""
    where = what or repo_id
    try:
        yield
    except BigmodelError:
        raise
    except GatedRepoError:
        raise BigmodelError(
            f"{repo_id} is a gated repo: accept its terms on the Hub, then {LOGIN}", where
        ) from None
    except RevisionNotFoundError:
        raise BigmodelError(f"revision {revision!r} not found in {repo_id}", where) from None
    except RepositoryNotFoundError:
        raise BigmodelError(
            f"repository {repo_id} not found on {constants.ENDPOINT}; if it is private, {LOGIN}",
            where,
        ) from None
    except RemoteEntryNotFoundError:
        raise BigmodelError(f"not found in {repo_id} at {revision}", where) from None
    except OfflineModeIsEnabled:
        raise BigmodelError(
            "offline (HF_HUB_OFFLINE is set) and the files are not here", where
        ) from None
    except LocalEntryNotFoundError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not in the cache"
        raise BigmodelError(f"cannot download from {repo_id}: {reason}", where) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "error"
        raise BigmodelError(f"the Hub answered HTTP {status} for {repo_id}", where) from None
    except http.TimeoutException:
        raise BigmodelError(
            f"no answer from {constants.ENDPOINT} within {timeout():g}s "
            "(network down or server stalled; HF_HUB_DOWNLOAD_TIMEOUT sets the limit)",
            where,
        ) from None
    except http.RemoteProtocolError:
        raise BigmodelError(
            f"connection to {constants.ENDPOINT} dropped in the middle of a response", where
        ) from None
    except http.TransportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BigmodelError(f"cannot reach {constants.ENDPOINT} ({reason[:120]})", where) from None


def fetch_bytes(url: str, what: str, start: int, end: int, size: int) -> bytes:
    """Bytes ``start..end`` (inclusive) of a ``size``-byte file, by one Range request
    (asked again while the Hub is busy).

    A server that ignores the Range (200 with more than was asked) or sends more or fewer
    bytes than asked is refused; the body is never read past what was asked for.
    """
    return retrying(lambda: _fetch_bytes(url, what, start, end, size))


def _fetch_bytes(url: str, what: str, start: int, end: int, size: int) -> bytes:
    asked = end - start + 1
    headers = hub_headers() | {"Range": f"bytes={start}-{end}"}
    body = bytearray()
    with get_session().stream("GET", url, headers=headers, timeout=timeout()) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        whole_file_asked = start == 0 and size <= asked
        if response.status_code == 200 and not whole_file_asked:
            raise BigmodelError(
                f"the server ignored the Range request (HTTP 200, whole file of {size} bytes); "
                "refusing to download the weights to read a header",
                what,
            )
        if response.status_code not in (200, 206):
            raise BigmodelError(f"unexpected HTTP {response.status_code} for a Range request", what)
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > asked:
                raise BigmodelError(f"the server sent more than the {asked} bytes asked for", what)
    expected = min(asked, size - start)
    if len(body) != expected:
        raise BigmodelError(
            f"short body: got {len(body)} of {expected} bytes at offset {start}", what
        )
    return bytes(body)


def fetch_small_file(url: str, what: str, size: int) -> bytes:
    """A whole small file (a JSON config), refusing one larger than the listed size (asked
    again while the Hub is busy)."""
    return retrying(lambda: _fetch_small_file(url, what, size))


def _fetch_small_file(url: str, what: str, size: int) -> bytes:
    body = bytearray()
    with get_session().stream("GET", url, headers=hub_headers(), timeout=timeout()) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > size:
                raise BigmodelError(f"the server sent more than the listed {size} bytes", what)
    if len(body) != size:
        raise BigmodelError(f"short body: got {len(body)} of {size} bytes", what)
    return bytes(body)


def fetch_header(repo_id: str, commit: str, rel: str, size: int) -> tuple[bytes, int]:
    """The 8-byte length plus JSON header of ``rel`` (validated), and the bytes received.

    One speculative Range of the first 64 KiB; a second one for the rest of a longer
    header.
    """
    url = file_url(repo_id, rel, commit)
    what = f"{repo_id}/{rel}"
    with hub_errors(repo_id, commit, what):
        head = fetch_bytes(url, what, 0, min(FIRST_RANGE, size) - 1, size) if size >= 8 else b""
        received = len(head)
        n = header_length(head, size, what)
        if len(head) < 8 + n:
            rest = fetch_bytes(url, what, len(head), 8 + n - 1, size)
            received += len(rest)
            head += rest
    raw = head[: 8 + n]
    parse_header(raw[8:], Path(what), size)
    return raw, received
