"""A local stand-in for the Hugging Face Hub, speaking what huggingface_hub 2.4 asks for.

Serves repos (repo id -> local folder) at a fixed commit; ``main`` resolves to it.
Endpoints (all under ``http://127.0.0.1:PORT``):

- ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes and LFS info)
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=..`` (one page, no ``Link``)
- ``POST /api/models/{repo}/paths-info/{rev}`` (form field ``paths``, repeated)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag``; weight files
  (LFS) answer ``302`` to a "CDN" on ``http://localhost:PORT/cdn/...`` (another origin,
  as the real CDN is) with ``X-Linked-Etag`` / ``X-Linked-Size``
- ``GET /cdn/{repo}/{path}``: the bytes, honouring ``Range: bytes=a-b`` (206 + Content-Range)

Faults (``server.fault``, applied to paths ending in ``server.fault_suffix``): ``gated``
(401 + ``X-Error-Code: GatedRepo`` on file downloads unless the request carries
``Authorization: Bearer {server.token}``), ``ignore_range`` (200, whole body), ``stall``
(sleep ``stall_seconds`` before answering), ``short`` (a 206 with half the range asked
for), ``drop`` (close the connection halfway through
the body), ``busy`` (503 + ``Retry-After: 0`` to the first ``busy_times`` requests of each
path, then the answer). ``server.extra`` adds files that need not exist on disk (a hostile
name such as ``../../x/pwned.json``: listed as is, served at its URL or wherever a client
normalises that URL to). ``server.latency`` delays every response. ``bytes_sent[path]`` counts body
bytes per repo path and ``requests`` records every request.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

COMMIT = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
CHUNK = 1 << 16


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None
    user_agent: str | None


@dataclass
class HubServer:
    """``with HubServer({"org/name": folder}) as hub: ...``; ``hub.endpoint`` is the URL."""

    repos: dict[str, Path]
    commit: str = COMMIT
    fault: str | None = None
    fault_suffix: str = ".safetensors"
    latency: float = 0.0
    stall_seconds: float = 5.0
    busy_times: int = 2
    token: str | None = None
    extra: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> name -> body
    requests: list[Request] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None
    _etags: dict[Path, str] = field(default_factory=dict)
    _busy: dict[str, int] = field(default_factory=dict)  # path -> 503s sent
    _port: int = 0  # kept after stop, for handlers still finishing a request

    @property
    def port(self) -> int:
        assert self._port, "the server was never started"
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HubServer:
        self.repos = {k: Path(v) for k, v in self.repos.items()}
        hub = self

        class Handler(_Handler):
            server_hub = hub

        httpd = _QuietServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        httpd.timeout = 5
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- bookkeeping ----------------------------------------------------------------
    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()

    def count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[path] = self.bytes_sent.get(path, 0) + n

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self.bytes_sent.values())

    def files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def etag(self, file: Path) -> str:
        """sha256 of the content (of name, size and mtime for big sparse test files)."""
        if file not in self._etags:
            st = file.stat()
            if st.st_size <= 64 << 20:
                self._etags[file] = hashlib.sha256(file.read_bytes()).hexdigest()
            else:
                key = f"{file}:{st.st_size}:{st.st_mtime_ns}".encode()
                self._etags[file] = hashlib.sha256(key).hexdigest()
        return self._etags[file]

    def entry(self, repo: str, rel: str) -> dict[str, Any]:
        """A tree / paths-info entry, as the Hub returns it."""
        file = self.repos[repo] / rel
        if file.is_dir():
            oid = hashlib.sha1(rel.encode()).hexdigest()
            return {"type": "directory", "oid": oid, "size": 0, "path": rel}
        size = file.stat().st_size
        out: dict[str, Any] = {
            "type": "file",
            "oid": hashlib.sha1(f"blob {rel}".encode()).hexdigest(),
            "size": size,
            "path": rel,
        }
        if rel.endswith(LFS_SUFFIXES):
            out["lfs"] = {"oid": self.etag(file), "size": size, "pointerSize": 134}
        return out

    def faulty(self, path: str) -> bool:
        return self.fault is not None and path.endswith(self.fault_suffix)

    def still_busy(self, path: str) -> bool:
        """For ``busy``: whether ``path`` gets a 503 this time."""
        with self._lock:
            sent = self._busy.get(path, 0)
            if sent >= self.busy_times:
                return False
            self._busy[path] = sent + 1
            return True


class _QuietServer(ThreadingHTTPServer):
    """Clients hanging up mid-response (as they should on an ignored Range) are normal."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- dispatch -------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        url = urlsplit(self.path)
        path = unquote(url.path)
        with hub._lock:
            hub.requests.append(
                Request(
                    method,
                    path,
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                    self.headers.get("User-Agent"),
                )
            )
        if hub.latency:
            time.sleep(hub.latency)
        if hub.fault == "stall" and hub.faulty(path):
            time.sleep(hub.stall_seconds)
        if hub.fault == "busy" and hub.faulty(path) and hub.still_busy(path):
            return self._send(503, {"Retry-After": "0"}, b"Service Unavailable")
        try:
            self._route(method, path, parse_qs(url.query))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        hub = self.server_hub
        body = self._extra_body(path)
        if body is not None:
            return self._send(200, {"X-Repo-Commit": hub.commit}, body)
        if path.startswith("/cdn/"):
            repo, rel = self._split_repo(path[len("/cdn/") :])
            return self._send_file(method, repo, rel) if repo else self._not_found("RepoNotFound")
        if path.startswith("/api/models/"):
            return self._api(method, path[len("/api/models/") :], query)
        repo, rest = self._split_repo(path[1:])
        if repo is None:
            return self._not_found("RepoNotFound")
        kind, _, rest = rest.partition("/")
        rev, _, rel = rest.partition("/")
        if kind != "resolve" or method == "POST":
            return self._not_found(None)
        if not self._revision_ok(rev):
            return self._not_found("RevisionNotFound")
        file = hub.repos[repo] / rel
        if not rel or not file.is_file():
            return self._not_found("EntryNotFound", commit=True)
        if hub.fault == "gated" and self.headers.get("Authorization") != f"Bearer {hub.token}":
            return self._gated(repo)
        self._resolve(method, repo, rel, file)

    def _extra_body(self, path: str) -> bytes | None:
        hub = self.server_hub
        for repo, files in hub.extra.items():
            for name, body in files.items():
                for rev in ("main", hub.commit):
                    url = f"/{repo}/resolve/{rev}/{name}"
                    if path in (url, posixpath.normpath(url)):
                        return body
        return None

    def _split_repo(self, rest: str) -> tuple[str | None, str]:
        for repo in self.server_hub.repos:
            if rest == repo or rest.startswith(repo + "/"):
                return repo, rest[len(repo) + 1 :]
        return None, rest

    def _revision_ok(self, rev: str) -> bool:
        return rev in ("main", self.server_hub.commit)

    # -- /api -------------------------------------------------------------------------
    def _api(self, method: str, rest: str, query: dict[str, list[str]]) -> None:
        hub = self.server_hub
        repo, tail = self._split_repo(rest)
        if repo is None:
            return self._not_found("RepoNotFound")
        kind, _, tail = tail.partition("/")
        rev, _, sub = tail.partition("/")
        if kind == "":
            rev = "main"
        if not self._revision_ok(rev):
            return self._not_found("RevisionNotFound")
        if method == "GET" and kind in ("", "revision") and not sub:
            return self._json(self._model_info(repo, query.get("blobs") == ["true"]))
        if method == "GET" and kind == "tree":
            recursive = query.get("recursive") == ["true"]
            return self._json(self._tree(repo, sub.strip("/"), recursive))
        if method == "POST" and kind == "paths-info":
            n = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(n).decode())
            found = [p for p in form.get("paths", []) if (hub.repos[repo] / p).exists()]
            return self._json([hub.entry(repo, p) for p in found])
        self._not_found(None)

    def _model_info(self, repo: str, blobs: bool) -> dict[str, Any]:
        hub = self.server_hub
        siblings = []
        for rel in hub.files(repo):
            sib: dict[str, Any] = {"rfilename": rel}
            if blobs:
                e = hub.entry(repo, rel)
                sib |= {"size": e["size"], "blobId": e["oid"]}
                if "lfs" in e:
                    lfs = e["lfs"]
                    sib["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": 134}
            siblings.append(sib)
        for name, body in hub.extra.get(repo, {}).items():
            sib = {"rfilename": name}
            siblings.append(sib | ({"size": len(body), "blobId": "0" * 40} if blobs else {}))
        return {
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": hub.commit,
            "private": False,
            "gated": "auto" if hub.fault == "gated" else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": siblings,
        }

    def _tree(self, repo: str, sub: str, recursive: bool) -> list[dict[str, Any]]:
        hub = self.server_hub
        base = hub.repos[repo] / sub
        items = base.rglob("*") if recursive else base.iterdir()
        rels = sorted(p.relative_to(hub.repos[repo]).as_posix() for p in items)
        return [hub.entry(repo, r) for r in rels]

    # -- files ------------------------------------------------------------------------
    def _resolve(self, method: str, repo: str, rel: str, file: Path) -> None:
        hub = self.server_hub
        etag = hub.etag(file)
        headers = {"X-Repo-Commit": hub.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if rel.endswith(LFS_SUFFIXES):
            cdn = f"http://localhost:{hub.port}/cdn/{repo}/{quote(rel)}"
            size = str(file.stat().st_size)
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": size, "Location": cdn}
            return self._send(302, headers, b"")
        if method == "HEAD":
            headers["Content-Length"] = str(file.stat().st_size)
            return self._send(200, headers, None)
        self._send_file(method, repo, rel, headers)

    def _send_file(
        self, method: str, repo: str, rel: str, extra: dict[str, str] | None = None
    ) -> None:
        hub = self.server_hub
        file = hub.repos[repo] / rel
        if not file.is_file():
            return self._not_found("EntryNotFound")
        size = file.stat().st_size
        start, end, status = 0, size - 1, 200
        want = _parse_range(self.headers.get("Range"), size)
        if want is not None and not (hub.fault == "ignore_range" and hub.faulty(rel)):
            start, end = want
            status = 206
            if hub.fault == "short" and hub.faulty(rel):
                end = start + (end - start) // 2
        headers = dict(extra or {}) | {"Content-Length": str(end - start + 1)}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(status, headers, None)
        if method == "HEAD":
            return
        length = end - start + 1
        if hub.fault == "drop" and hub.faulty(rel):
            length //= 2
        with open(file, "rb") as f:
            f.seek(start)
            while length > 0:
                chunk = f.read(min(CHUNK, length))
                if not chunk:
                    break
                hub.count(f"{repo}/{rel}", len(chunk))  # before the client can see it
                self.wfile.write(chunk)
                length -= len(chunk)
        if hub.fault == "drop" and hub.faulty(rel):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    # -- responses --------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes | None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self._send(200, {"Content-Type": "application/json"}, body)

    def _not_found(self, code: str | None, commit: bool = False) -> None:
        messages = {
            "RepoNotFound": "Repository not found",
            "RevisionNotFound": "Invalid rev id",
            "EntryNotFound": "Entry not found",
        }
        headers = {"Content-Type": "application/json"}
        if code:
            headers |= {"X-Error-Code": code, "X-Error-Message": messages[code]}
        if commit:
            headers["X-Repo-Commit"] = self.server_hub.commit
        body = json.dumps({"error": messages.get(code or "", "Not found")}).encode()
        self._send(404, headers, body)

    def _gated(self, repo: str) -> None:
        message = (
            f"Access to model {repo} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in."
        )
        headers = {
            "Content-Type": "application/json",
            "X-Error-Code": "GatedRepo",
            "X-Error-Message": message,
        }
        self._send(401, headers, json.dumps({"error": message}).encode())


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end), clipped."""
    if not value or not value.startswith("bytes=") or "," in value or size == 0:
        return None
    first, _, last = value[len("bytes=") :].partition("-")
    if not first:
        n = int(last)
        return max(size - n, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else None
