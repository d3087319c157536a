"""A Hugging Face hub on 127.0.0.1 for the tests, and the published files' stand-ins.

``HubServer`` imitates the parts of the hub the pipeline uses: ``/resolve/`` file URLs with
Range support and the ``/api/{models|datasets}/<repo>/revision/<rev>`` endpoint (commit, file
listing with each file's size and LFS sha256; a revision such as ``refs/convert/parquet`` comes
URL-quoted). A file is bytes in memory or a file on disk (checkpoints of hundreds of MB); a
``raw`` file is served at a plain path (the GitHub raw file of the TEXTSPAN pool). Faults on
demand: a dropped connection part-way, wrong LFS hashes, a listing without hashes, an HTML page
served with 200, a body cut short without a length. Every request is recorded with its status,
so a test can list what the server did not have (:meth:`HubServer.misses`). A file added with
``once=True`` is deleted from disk after its first whole download (and answered 410 after that):
the rehearsal's checkpoints then take disk twice (hub and pipeline) only while in flight.

Used by the unit tests (the ``hub`` fixture, also in ``conftest.py``) and by the dress rehearsal
(``tests/workflow/rehearsal``), which fills it with every source the paper configuration downloads.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import sys
import threading
import types
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from mass_pipeline.sources.download import HubRepo, LockFile, download_hub_file, resolve_revision

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_CHUNK = 1 << 20


def _size(data: bytes | Path) -> int:
    return data.stat().st_size if isinstance(data, Path) else len(data)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """What every test server's handler shares: HTTP/1.1 keep-alive (as the hub) and no request log."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass


def send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
         headers: dict[str, str] | None = None) -> None:
    """Answer with ``status``, ``headers`` and the whole ``body`` (its length announced)."""
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port, daemon threads) answering with ``handler``."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HubServer(LocalServer):
    """A tiny threaded hub: ``add`` files to ``repo_path`` (``datasets/<id>`` for datasets) at a commit."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], dict[str, bytes | Path]] = {}
        self.branches: dict[tuple[str, str], str] = {}
        self.raw: dict[str, bytes | Path] = {}  # plain path -> file (not a hub repository file)
        self.lfs_override: dict[str, str] = {}  # filename -> sha256 the API reports instead of the real one
        self.drop_after: dict[str, int] = {}  # filename -> bytes sent before the connection drops (once)
        self.no_lfs: set[str] = set()  # filenames the API lists without size or LFS sha256 (as an old lock)
        self.html: dict[str, str] = {}  # filename -> Content-Type of an HTML error page served with status 200
        self.cut_without_length: dict[str, int] = {}  # filename -> bytes sent, no Content-Length, then closed
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.statuses: list[tuple[str, int]] = []  # (path, status answered)
        self.once: set[tuple[str, str, str]] = set()  # (repo, commit, name) deleted after one whole download
        self.gone: set[tuple[str, str, str]] = set()  # what ``once`` has deleted
        self.lock = threading.Lock()
        self._sha: dict[tuple[str, str, str], str] = {}
        self._size: dict[tuple[str, str, str], int] = {}
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with server.lock:
                    server.requests.append((path, self.headers.get("Range")))
                if path.startswith("/api/"):
                    self._api(path)
                elif "/resolve/" in path:
                    self._resolve(path)
                elif unquote(path) in server.raw:
                    self._body(server.raw[unquote(path)], unquote(path))
                else:
                    self._send(404, b"not found")

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                with server.lock:
                    server.statuses.append((urlsplit(self.path).path, status))
                send(self, status, body, headers)

            def _api(self, path: str) -> None:
                try:
                    kind, rest = path[len("/api/"):].split("/", 1)
                    repo_id, revision = rest.split("/revision/", 1)
                except ValueError:
                    return self._send(404, b'{"error": "unknown API call"}')
                repo_path = f"datasets/{repo_id}" if kind == "datasets" else repo_id
                commit = server.commit_of(repo_path, unquote(revision))
                if commit is None:
                    return self._send(404, b'{"error": "Repository not found"}')
                siblings = []
                for name in server.files[(repo_path, commit)]:
                    if name in server.no_lfs:
                        siblings.append({"rfilename": name})
                        continue
                    digest = server.lfs_override.get(name) or server.sha256(repo_path, commit, name)
                    size = server.size(repo_path, commit, name)
                    siblings.append({"rfilename": name, "size": size,
                                     "lfs": {"sha256": digest, "size": size, "pointerSize": 134}})
                self._send(200, json.dumps({"id": repo_id, "sha": commit, "siblings": siblings}).encode(),
                           {"Content-Type": "application/json"})

            def _resolve(self, path: str) -> None:
                repo_path, rest = path.lstrip("/").split("/resolve/", 1)
                revision, filename = rest.split("/", 1)
                commit = server.commit_of(repo_path, unquote(revision))
                data = server.files.get((repo_path, commit), {}).get(unquote(filename)) if commit else None
                if data is None:
                    return self._send(404, b"Entry not found")
                name = unquote(filename)
                key = (repo_path, commit, name)
                if key in server.gone:
                    return self._send(410, b"Gone: served once already")
                if name in server.html:
                    page = b"<!DOCTYPE html>\n<html><body><h1>Service unavailable</h1></body></html>\n"
                    return self._send(200, page, {"Content-Type": server.html[name]})
                if name in server.cut_without_length:  # a body cut short that the client cannot tell
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(_read(data, 0, server.cut_without_length[name]))
                    self.close_connection = True
                    return
                if self._body(data, name) and key in server.once:
                    server.sha256(*key)  # the listing still reports it
                    with server.lock:
                        server.once.discard(key)
                        server.gone.add(key)
                    data.unlink()

            def _body(self, data: bytes | Path, name: str) -> bool:
                """Send ``data`` (from a Range start); True when it went out to its end."""
                size = _size(data)
                start = 0
                range_header = self.headers.get("Range")
                if range_header:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= size:
                        self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                        return False
                with server.lock:
                    server.statuses.append((urlsplit(self.path).path, 206 if range_header else 200))
                self.send_response(206 if range_header else 200)
                if range_header:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.send_header("Content-Length", str(size - start))
                self.end_headers()
                with server.lock:
                    cut = server.drop_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(_read(data, start, cut))
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return False
                if isinstance(data, bytes):
                    self.wfile.write(data[start:])
                    return True
                with open(data, "rb") as fh:
                    fh.seek(start)
                    for block in iter(lambda: fh.read(_CHUNK), b""):
                        self.wfile.write(block)
                return True

        super().__init__(Handler)

    def add(self, repo_path: str, filename: str, data: bytes | Path, commit: str = COMMIT,
            branch: str | None = "main", once: bool = False) -> None:
        """Put ``data`` (bytes, or a file on disk served from there) at ``filename`` of ``commit``,
        which ``branch`` (None: no branch) then points to; ``once``: delete the file on disk after its
        first whole download. A file added again after that is served again."""
        self.files.setdefault((repo_path, commit), {})[filename] = data
        self._size[(repo_path, commit, filename)] = _size(data)
        self.gone.discard((repo_path, commit, filename))  # put back: served again
        if once:
            assert isinstance(data, Path), "only a file on disk can be served once"
            self.once.add((repo_path, commit, filename))
        if branch is not None:
            self.branches[(repo_path, branch)] = commit

    def commit_of(self, repo_path: str, revision: str) -> str | None:
        if (repo_path, revision) in self.files:
            return revision
        return self.branches.get((repo_path, revision))

    def size(self, repo_path: str, commit: str, name: str) -> int:
        return self._size[(repo_path, commit, name)]

    def sha256(self, repo_path: str, commit: str, name: str) -> str:
        """The file's sha256 (the hub's LFS oid), computed once."""
        key = (repo_path, commit, name)
        if key not in self._sha:
            data = self.files[(repo_path, commit)][name]
            digest = hashlib.sha256()
            if isinstance(data, bytes):
                digest.update(data)
            else:
                with open(data, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 23), b""):
                        digest.update(block)
            self._sha[key] = digest.hexdigest()
        return self._sha[key]

    def ranges(self, filename: str) -> list[str | None]:
        return [r for p, r in self.requests if "/resolve/" in p and p.endswith(filename)]

    def api_calls(self) -> int:
        return sum(p.startswith("/api/") for p, _ in self.requests)

    def misses(self) -> list[tuple[str, int]]:
        """Requests answered with an error status (what the pipeline asked for that the hub lacks)."""
        return [(p, s) for p, s in self.statuses if s >= 400 and s != 416]


def _read(data: bytes | Path, start: int, count: int) -> bytes:
    if isinstance(data, bytes):
        return data[start:start + count]
    with open(data, "rb") as fh:
        fh.seek(start)
        return fh.read(count)


@pytest.fixture
def hub():
    server = HubServer().start()
    yield server
    server.stop()


def pickled_head(monkeypatch, path: Path, weight: torch.Tensor, module: str = "src.modeling",
                 zip_layout: bool = True) -> None:
    """Pickle a whole ``<module>.ClassificationHead`` (a Linear with ``normalize``, the weight and a zero
    bias), as the task-vector code saved its heads; the class and its modules are gone at load time.
    ``monkeypatch``: pytest's fixture, or a ``pytest.MonkeyPatch()`` outside a test."""
    with monkeypatch.context() as patch:
        class ClassificationHead(torch.nn.Linear):
            def __init__(self, weights: torch.Tensor):
                super().__init__(weights.shape[1], weights.shape[0])
                self.normalize = True
                self.weight = torch.nn.Parameter(weights.clone())
                self.bias = torch.nn.Parameter(torch.zeros_like(self.bias))

        ClassificationHead.__module__ = module
        ClassificationHead.__qualname__ = "ClassificationHead"
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            patch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        sys.modules[module].ClassificationHead = ClassificationHead
        torch.save(ClassificationHead(weight), path, _use_new_zipfile_serialization=zip_layout)


# --- small downloads against the server (test_download, test_download_faults) ---

def payload(n: int = 200_000, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FAST = {"retries": 0, "backoff": 0.0, "timeout": 5.0, "chunk_size": 4096}


def fetch(hub: HubServer, tmp_path: Path, name: str = "weights.bin", **kwargs):
    lock = LockFile(tmp_path / "sources.lock.json")
    snapshot = resolve_revision(HubRepo("org/model"), None, lock, endpoint=hub.url)
    target = tmp_path / "out" / name
    return lock, target, lambda: download_hub_file(snapshot, name, target, lock, endpoint=hub.url,
                                                   **{**FAST, **kwargs})
