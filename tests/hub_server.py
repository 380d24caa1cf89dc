"""An offline stand-in for the Hugging Face Hub and for plain download URLs, for tests.

``HubServer(root)`` serves, on 127.0.0.1 and a free port:

- ``root/hub/<org>/<repo>/<filename>`` at ``/<org>/<repo>/resolve/<revision>/<filename>`` (HEAD and GET), with the
  headers huggingface_hub's ``hf_hub_download`` needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and no Xet
  headers, so the client takes its plain-HTTP path. Any branch name is accepted as a revision; a 40-hex revision must
  be the repo's commit (``commit(repo_id)``, a stable fake sha derived from the repo id).
- ``/api/models/<repo_id>[/revision/<rev>]`` (``model_info`` / ``repo_info``) and
  ``/api/models/<repo_id>/tree/<rev>[/<path>]`` (``list_repo_tree``), which is what ``snapshot_download`` asks for.
  ``hf_hub_download`` itself needs neither.
- ``root/files/<any path>`` at ``/files/<any path>``: plain files for ``torch.hub.download_url_to_file``-style
  downloaders. ``add_url_file(url, data)`` stores a file for ``https://host/path`` at ``files/host/path``, which is
  where ``<mirror>/host/path`` finds it with ``mirror == server.url("files")``.

Errors are answered the way the Hub answers them, so huggingface_hub 2.4.0 raises its own exceptions: a missing repo is
``404`` + ``X-Error-Code: RepoNotFound`` (``RepositoryNotFoundError``), a missing file ``404`` +
``X-Error-Code: EntryNotFound`` + ``X-Repo-Commit`` (``RemoteEntryNotFoundError``, a subclass of
``EntryNotFoundError``; the client also records the absence under ``.no_exist/``), a 40-hex revision that is not the
repo's commit ``404`` + ``X-Error-Code: RevisionNotFound`` (``RevisionNotFoundError``). Plain files that are missing
are a bare 404.

GET honours ``Range: bytes=START-[END]`` (206 + ``Content-Range``), which huggingface_hub uses to resume a download
whose connection dropped. Failure switches, keyed by the path under ``root`` (``"hub/<org>/<repo>/<file>"`` or
``"files/<path>"``), apply to GET only (HEAD still reports the full size):

- ``truncate(key, at, mode="close")``: headers promise the full body, the bytes from offset ``at`` on are never
  sent and the connection is closed (a dropped connection).
- ``truncate(key, at, mode="short")``: an honest but short response: ``Content-Length`` is what is sent, the
  file's first ``at`` bytes (a server or proxy that serves a cut file).
- ``fail(key, status)``: answer ``status`` (e.g. 500) instead of the file.

Each switch takes ``times`` (how many GETs it applies to; ``None``: all). Every request is logged in ``requests``
as ``(method, path)`` (path unquoted, without the query) and its headers in ``request_headers`` (names
lowercased), so a test can
assert that a second call was answered from the cache (no new GET, or no request at all).

The server speaks HTTP/1.0 (one connection per request), so after ``stop()`` no pooled keep-alive connection of a
client can still reach it: the next request is refused, as with no network.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_HEX40 = re.compile(r"[0-9a-f]{40}")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_CHUNK = 1 << 16


@dataclass
class _Fault:
    kind: str  # "close", "short" or "status"
    at: int = 0
    status: int = 500
    times: int | None = None  # None: every GET


class HubServer:
    """A local Hub + plain-file server; see the module docstring. Use as a context manager or call ``start()``/
    ``stop()``."""

    def __init__(self, root: Path | str, host: str = "127.0.0.1") -> None:
        self.root = Path(root)
        (self.root / "hub").mkdir(parents=True, exist_ok=True)
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str]] = []
        self.request_headers: list[dict[str, str]] = []
        self._host = host
        self._lock = threading.Lock()
        self._faults: dict[str, _Fault] = {}
        self._commits: dict[str, str] = {}
        self._etags: dict[tuple[str, int, int], str] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # -- life cycle -------------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self._host, 0), _Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        httpd.hub = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self.endpoint = f"http://{self._host}:{httpd.server_address[1]}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (idempotent): later requests get 'connection refused'."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content ----------------------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """The URL of ``path`` on this server, e.g. ``url("files/a.pt")``."""
        return f"{self.endpoint}/{urllib.parse.quote(path.lstrip('/'), safe='/')}"

    def add_hub_file(self, repo_id: str, filename: str, data: bytes) -> Path:
        """Put ``data`` in Hub repo ``repo_id`` as ``filename`` (which may contain folders)."""
        return self._write(self.root / "hub" / repo_id / filename, data)

    def add_file(self, path: str, data: bytes) -> Path:
        """Serve ``data`` at ``/files/<path>``."""
        return self._write(self.root / "files" / path, data)

    def add_url_file(self, url: str, data: bytes) -> Path:
        """Serve ``data`` for ``https://host/path`` at ``/files/host/path`` (see ``mirror``)."""
        parts = urllib.parse.urlsplit(url)
        return self.add_file(f"{parts.netloc}{parts.path}", data)

    @property
    def mirror(self) -> str:
        """A URL prefix under which ``https://host/path`` is served as ``<mirror>/host/path``."""
        return self.url("files")

    @staticmethod
    def _write(path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def commit(self, repo_id: str) -> str:
        """The repo's current commit sha (stable per repo id unless changed with ``set_commit``)."""
        with self._lock:
            if repo_id not in self._commits:
                self._commits[repo_id] = hashlib.sha1(f"hub-server:{repo_id}".encode()).hexdigest()
            return self._commits[repo_id]

    def set_commit(self, repo_id: str, sha: str | None = None) -> str:
        """Simulate a new commit on the repo's branches; returns the new sha."""
        sha = sha or hashlib.sha1(f"hub-server:{repo_id}:{len(self._commits)}:{id(self)}".encode()).hexdigest()
        if not _HEX40.fullmatch(sha):
            raise ValueError(f"not a 40-hex commit sha: {sha!r}")
        with self._lock:
            self._commits[repo_id] = sha
        return sha

    # -- failure switches -------------------------------------------------------------------------------------------

    def truncate(self, key: str, at: int, *, mode: str = "close", times: int | None = None) -> None:
        """Cut GET responses for ``key`` (``"hub/<repo_id>/<file>"`` or ``"files/<path>"``) at file offset ``at``."""
        if mode not in ("close", "short"):
            raise ValueError(f"mode must be 'close' or 'short', not {mode!r}")
        with self._lock:
            self._faults[key.strip("/")] = _Fault(kind=mode, at=at, times=times)

    def fail(self, key: str, status: int = 500, *, times: int | None = None) -> None:
        """Answer GETs for ``key`` with HTTP ``status`` instead of the file."""
        with self._lock:
            self._faults[key.strip("/")] = _Fault(kind="status", status=status, times=times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_headers.clear()

    def gets(self, path_part: str = "") -> list[str]:
        """Paths of the logged GET requests that contain ``path_part``."""
        with self._lock:
            return [p for m, p in self.requests if m == "GET" and path_part in p]

    # -- used by the handler ----------------------------------------------------------------------------------------

    def _log(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path))
            self.request_headers.append(headers)

    def _take_fault(self, key: str) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(key)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def _etag(self, path: Path) -> str:
        st = path.stat()
        cache_key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            etag = self._etags.get(cache_key)
        if etag is None:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            etag = digest.hexdigest()
            with self._lock:
                self._etags[cache_key] = etag
        return etag

    def _repo_dir(self, repo_id: str) -> Path | None:
        """The repo's folder, or None if it does not exist (or ``repo_id`` tries to leave ``root/hub``)."""
        hub = (self.root / "hub").resolve()
        repo = (hub / repo_id).resolve()
        if not repo.is_relative_to(hub) or repo == hub or not repo.is_dir():
            return None
        return repo


def _inside(base: Path, rel: str) -> Path | None:
    path = (base / rel).resolve()
    return path if path.is_relative_to(base.resolve()) and path.is_file() else None


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "HubServer/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # silence the stderr access log
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- routing ----------------------------------------------------------------------------------------------------

    def _dispatch(self, head: bool) -> None:
        raw_path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(raw_path)
        self.hub._log(self.command, path, {k.lower(): v for k, v in self.headers.items()})
        try:
            if raw_path.startswith("/files/"):
                self._serve_plain(path[len("/files/") :], head)
            elif raw_path.startswith("/api/"):
                self._serve_api(raw_path, urllib.parse.parse_qs(query), head)
            elif "/resolve/" in raw_path:
                self._serve_resolve(raw_path, head)
            else:
                self._error(404, head, message="Not found")
        except (BrokenPipeError, ConnectionResetError):  # the client went away (e.g. after a truncated body)
            pass

    def _serve_plain(self, rel: str, head: bool) -> None:
        file = _inside(self.hub.root / "files", rel)
        if file is None:
            self._error(404, head, message="File not found")
            return
        self._send_file(file, f"files/{rel}", head, {"ETag": f'"{self.hub._etag(file)}"'})

    def _serve_resolve(self, raw_path: str, head: bool) -> None:
        raw_repo, _, rest = raw_path.lstrip("/").partition("/resolve/")
        raw_rev, _, raw_file = rest.partition("/")
        repo_id = urllib.parse.unquote(raw_repo)
        revision = urllib.parse.unquote(raw_rev)
        filename = urllib.parse.unquote(raw_file)
        repo = self.hub._repo_dir(repo_id)
        if repo is None:
            self._error(404, head, code="RepoNotFound", message="Repository not found")
            return
        commit = self.hub.commit(repo_id)
        if _HEX40.fullmatch(revision) and revision != commit:
            self._error(404, head, code="RevisionNotFound", message="Invalid rev id: " + revision)
            return
        file = _inside(repo, filename) if filename else None
        if file is None:
            self._error(404, head, code="EntryNotFound", message="Entry not found", commit=commit)
            return
        headers = {"ETag": f'"{self.hub._etag(file)}"', "X-Repo-Commit": commit}
        self._send_file(file, f"hub/{repo_id}/{filename}", head, headers)

    def _serve_api(self, raw_path: str, query: dict[str, list[str]], head: bool) -> None:
        m = re.fullmatch(r"/api/models/(.+?)(?:/(revision|tree)/([^/]+)(/.*)?)?", raw_path)
        if m is None:
            self._error(404, head, message="Not found")  # e.g. /api/agent-harnesses: no such thing here
            return
        repo_id = urllib.parse.unquote(m.group(1))
        kind, revision = m.group(2), urllib.parse.unquote(m.group(3) or "main")
        repo = self.hub._repo_dir(repo_id)
        if repo is None:
            self._error(404, head, code="RepoNotFound", message="Repository not found")
            return
        commit = self.hub.commit(repo_id)
        if _HEX40.fullmatch(revision) and revision != commit:
            self._error(404, head, code="RevisionNotFound", message="Invalid rev id: " + revision)
            return
        files = sorted(p for p in repo.rglob("*") if p.is_file())
        if kind == "tree":
            sub = urllib.parse.unquote(m.group(4) or "").strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            body: object = self._tree(repo, files, sub, recursive)
            if body is None:
                self._error(404, head, code="EntryNotFound", message="Entry not found", commit=commit)
                return
        else:
            body = {
                "_id": commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": p.relative_to(repo).as_posix()} for p in files],
            }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    @staticmethod
    def _tree(repo: Path, files: list[Path], sub: str, recursive: bool) -> list[dict] | None:
        base = repo / sub if sub else repo
        if not base.is_dir():
            return None
        entries: dict[str, dict] = {}
        for file in files:
            if not file.is_relative_to(base):
                continue
            parts = file.relative_to(base).parts
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts)) + 1):
                rel = (Path(sub) / Path(*parts[:i])).as_posix() if sub else Path(*parts[:i]).as_posix()
                if i == len(parts):
                    data = file.read_bytes()
                    entries[rel] = {"type": "file", "oid": _git_blob_sha(data), "size": len(data), "path": rel}
                else:
                    entries.setdefault(rel, {"type": "directory", "oid": _git_blob_sha(rel.encode()), "path": rel})
        return [entries[k] for k in sorted(entries)]

    # -- responses --------------------------------------------------------------------------------------------------

    def _error(self, status: int, head: bool, *, code: str | None = None, message: str, commit: str | None = None):
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code is not None:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _send_file(self, file: Path, key: str, head: bool, headers: dict[str, str]) -> None:
        size = file.stat().st_size
        start, end = 0, size  # [start, end)
        status = 200
        range_header = None if head else self.headers.get("Range")
        if range_header:
            m = _RANGE.match(range_header.strip())
            if m is not None:
                start = int(m.group(1))
                end = min(int(m.group(2)) + 1, size) if m.group(2) else size
                if start >= size or start >= end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        fault = None if head else self.hub._take_fault(key)
        if fault is not None and fault.kind == "status":
            self._error(fault.status, head, message=f"Simulated HTTP {fault.status}")
            return
        stop = end  # bytes actually sent: [start, stop)
        if fault is not None:
            stop = max(start, min(end, fault.at))
            if fault.kind == "short":
                end = stop  # the headers describe what is sent
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{max(end - 1, start)}/{size}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if head:
            return
        with open(file, "rb") as f:
            f.seek(start)
            remaining = stop - start
            while remaining > 0:
                block = f.read(min(_CHUNK, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)
        self.wfile.flush()
        if fault is not None:
            self.close_connection = True
