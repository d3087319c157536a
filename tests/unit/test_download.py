"""Resumable, verified downloads against a real HTTP server on 127.0.0.1.

``HubServer`` imitates the parts of the Hugging Face hub the pipeline uses: ``/resolve/`` file
URLs with Range support and the ``/api/.../revision/...`` endpoint; it can drop a connection
part-way or serve wrong bytes, and records every request so tests can see what was asked for.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from mass.io import ArtifactError
from mass.sources.download import (
    ChecksumMismatch,
    DownloadError,
    DownloadInterrupted,
    FileRecord,
    HubRepo,
    LockFile,
    download,
    download_hub_file,
    resolve_revision,
)
from mass.sources.download import main as download_main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """A tiny threaded hub: ``add`` files to ``repo_path`` (``datasets/<id>`` for datasets) at a commit."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.branches: dict[tuple[str, str], str] = {}
        self.lfs_override: dict[str, str] = {}  # filename -> sha256 the API reports instead of the real one
        self.drop_after: dict[str, int] = {}  # filename -> bytes sent before the connection drops (once)
        self.no_lfs: set[str] = set()  # filenames the API lists without size or LFS sha256 (as an old lock)
        self.html: dict[str, str] = {}  # filename -> Content-Type of an HTML error page served with status 200
        self.cut_without_length: dict[str, int] = {}  # filename -> bytes sent, no Content-Length, then closed
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with server.lock:
                    server.requests.append((path, self.headers.get("Range")))
                if path.startswith("/api/"):
                    self._api(path)
                elif "/resolve/" in path:
                    self._resolve(path)
                else:
                    self._send(404, b"not found")

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _api(self, path: str) -> None:
                kind, rest = path[len("/api/"):].split("/", 1)
                repo_id, revision = rest.split("/revision/", 1)
                repo_path = f"datasets/{repo_id}" if kind == "datasets" else repo_id
                commit = server.commit_of(repo_path, unquote(revision))
                if commit is None:
                    return self._send(404, b'{"error": "Repository not found"}')
                siblings = [{"rfilename": name} if name in server.no_lfs else
                            {"rfilename": name, "size": len(data),
                             "lfs": {"sha256": server.lfs_override.get(name, hashlib.sha256(data).hexdigest()),
                                     "size": len(data), "pointerSize": 134}}
                            for name, data in server.files[(repo_path, commit)].items()]
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
                if name in server.html:
                    page = b"<!DOCTYPE html>\n<html><body><h1>Service unavailable</h1></body></html>\n"
                    return self._send(200, page, {"Content-Type": server.html[name]})
                if name in server.cut_without_length:  # a body cut short that the client cannot tell
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[:server.cut_without_length[name]])
                    self.close_connection = True
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                body = data[start:]
                self.send_response(206 if range_header else 200)
                if range_header:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with server.lock:
                    cut = server.drop_after.pop(unquote(filename), None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def add(self, repo_path: str, filename: str, data: bytes, commit: str = COMMIT, branch: str = "main") -> None:
        self.files.setdefault((repo_path, commit), {})[filename] = data
        self.branches[(repo_path, branch)] = commit

    def commit_of(self, repo_path: str, revision: str) -> str | None:
        if (repo_path, revision) in self.files:
            return revision
        return self.branches.get((repo_path, revision))

    def ranges(self, filename: str) -> list[str | None]:
        return [r for p, r in self.requests if "/resolve/" in p and p.endswith(filename)]

    def api_calls(self) -> int:
        return sum(p.startswith("/api/") for p, _ in self.requests)


@pytest.fixture
def hub():
    server = HubServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


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


def test_complete_download_is_verified_and_recorded(hub, tmp_path):
    data = payload()
    hub.add("org/model", "weights.bin", data)
    lock, target, run = fetch(hub, tmp_path)
    record = run()
    assert target.read_bytes() == data and record == FileRecord(len(data), sha(data))
    assert not target.with_name("weights.bin.part").exists()
    pinned = json.loads(lock.path.read_text())
    assert pinned["revisions"]["org/model@main"]["commit"] == COMMIT
    assert pinned["files"][f"hf://org/model@{COMMIT}/weights.bin"] == {"size": len(data), "sha256": sha(data)}
    assert hub.ranges("weights.bin") == [None]


def test_interrupted_download_resumes_with_range_request(hub, tmp_path):
    data = payload()
    hub.add("org/model", "weights.bin", data)
    hub.drop_after["weights.bin"] = 50_000
    lock, target, run = fetch(hub, tmp_path)
    with pytest.raises(DownloadInterrupted, match="rerun resumes"):
        run()
    part = target.with_name("weights.bin.part")
    kept = part.stat().st_size  # whole chunks received before the drop
    assert not target.exists() and 0 < kept <= 50_000
    record = run()
    assert hub.ranges("weights.bin") == [None, f"bytes={kept}-"]
    assert record.sha256 == sha(data) and sha(target.read_bytes()) == sha(data) and not part.exists()


def test_dropped_connection_is_resumed_within_one_call(hub, tmp_path):
    data = payload()
    hub.add("org/model", "weights.bin", data)
    hub.drop_after["weights.bin"] = 12_345
    _, target, run = fetch(hub, tmp_path, retries=2)
    assert run().sha256 == sha(data)
    first, resumed = hub.ranges("weights.bin")
    assert first is None and 0 < int(resumed.removeprefix("bytes=").rstrip("-")) <= 12_345


def test_checksum_mismatch_leaves_nothing_a_rerun_would_trust(hub, tmp_path):
    data = payload()
    hub.add("org/model", "weights.bin", data)
    lock, target, run = fetch(hub, tmp_path)
    run()
    target.unlink()
    hub.add("org/model", "weights.bin", payload(seed=2))  # same commit, different bytes: corruption
    with pytest.raises(ChecksumMismatch) as err:
        run()
    message = str(err.value)
    assert str(target) in message and f"{hub.url}/org/model/resolve/{COMMIT}/weights.bin" in message
    assert str(lock.path) in message
    assert not target.exists() and not target.with_name("weights.bin.part").exists()
    hub.add("org/model", "weights.bin", data)
    assert run().sha256 == sha(data)
    assert hub.ranges("weights.bin")[-1] is None  # a clean re-download, nothing resumed


def test_hub_lfs_checksum_is_enforced_on_first_download(hub, tmp_path):
    hub.add("org/model", "weights.bin", payload())
    hub.lfs_override["weights.bin"] = "f" * 64
    lock, target, run = fetch(hub, tmp_path)
    with pytest.raises(ChecksumMismatch):
        run()
    assert not target.exists() and lock.file(f"hf://org/model@{COMMIT}/weights.bin") is None


def test_missing_file_fails_with_file_and_url(hub, tmp_path):
    hub.add("org/model", "weights.bin", payload())
    _, target, run = fetch(hub, tmp_path, name="absent.bin")
    with pytest.raises(DownloadError) as err:
        run()
    assert isinstance(err.value, ArtifactError)
    assert "404" in str(err.value) and str(target) in str(err.value)
    assert f"{hub.url}/org/model/resolve/{COMMIT}/absent.bin" in str(err.value)
    assert "place the file" in str(err.value) and not target.exists()


def test_unknown_repository_names_repo_and_revision(hub, tmp_path):
    with pytest.raises(DownloadError, match="org/nothing.*'v9'"):
        resolve_revision(HubRepo("org/nothing"), "v9", LockFile(tmp_path / "lock.json"), endpoint=hub.url)


def test_connection_refused_is_reported_with_url(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.bin"
    with pytest.raises(DownloadInterrupted) as err:
        download(url, tmp_path / "file.bin", retries=1, backoff=0.0, timeout=2.0)
    assert url in str(err.value) and str(tmp_path / "file.bin") in str(err.value)


def test_url_download_records_then_verifies_lock(hub, tmp_path):
    hub.add("org/model", "weights.bin", payload())
    url = f"{hub.url}/org/model/resolve/main/weights.bin"
    lock = LockFile(tmp_path / "lock.json")
    target = tmp_path / "weights.bin"
    download(url, target, lock=lock, **FAST)
    assert lock.file(url) == FileRecord(200_000, sha(payload()))
    target.unlink()
    hub.add("org/model", "weights.bin", payload(seed=3))  # the branch moved: the lock catches it
    with pytest.raises(ChecksumMismatch, match="delete the entry"):
        download(url, target, lock=lock, **FAST)


def test_file_on_disk_is_verified_not_downloaded(hub, tmp_path):
    data = payload()
    hub.add("org/model", "weights.bin", data)
    lock, target, run = fetch(hub, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    assert run().sha256 == sha(data) and hub.ranges("weights.bin") == []
    target.write_bytes(b"something else")
    with pytest.raises(ChecksumMismatch, match="Delete it and rerun"):
        run()
    assert target.read_bytes() == b"something else"  # the user's file is reported, never deleted


def test_pinned_revision_needs_no_network(hub, tmp_path):
    hub.add("datasets/org/data", "data/train-00000-of-00001.parquet", b"x")
    hub.add("datasets/org/data", "README.md", b"y")
    lock = LockFile(tmp_path / "lock.json")
    repo = HubRepo("org/data", "dataset")
    keep = lambda name: name.endswith(".parquet")  # noqa: E731
    first = resolve_revision(repo, None, lock, endpoint=hub.url, keep_listing=keep)
    assert first.commit == COMMIT and "README.md" in first.files
    again = resolve_revision(repo, None, lock, endpoint="http://127.0.0.1:9", keep_listing=keep)
    assert again.commit == COMMIT and list(again.files) == ["data/train-00000-of-00001.parquet"]
    assert hub.api_calls() == 1


def test_new_branch_commit_does_not_move_a_pin(hub, tmp_path):
    hub.add("org/model", "weights.bin", payload())
    lock = LockFile(tmp_path / "lock.json")
    resolve_revision(HubRepo("org/model"), None, lock, endpoint=hub.url)
    hub.add("org/model", "weights.bin", payload(seed=5), commit="f" * 40)
    assert resolve_revision(HubRepo("org/model"), None, lock, endpoint=hub.url).commit == COMMIT


def test_config_revision_is_pinned_on_first_resolution_and_reused(hub, tmp_path):
    hub.add("org/model", "weights.bin", payload(), branch="v1")
    lock = LockFile(tmp_path / "lock.json")
    assert resolve_revision(HubRepo("org/model"), "v1", lock, endpoint=hub.url).commit == COMMIT
    assert lock.revision("org/model@v1") == {  # the pin carries its listing and the hub's checksums
        "commit": COMMIT, "files": ["weights.bin"],
        "records": {"weights.bin": {"size": 200_000, "sha256": sha(payload())}}}
    hub.add("org/model", "weights.bin", payload(seed=5), commit="f" * 40, branch="v1")  # the tag is moved
    assert resolve_revision(HubRepo("org/model"), "v1", lock, endpoint=hub.url).commit == COMMIT
    assert hub.api_calls() == 1
    pinned = resolve_revision(HubRepo("org/model"), "f" * 40, lock, endpoint=hub.url)
    assert pinned.commit == "f" * 40 and pinned.files["weights.bin"] == FileRecord(200_000, sha(payload(seed=5)))
    again = resolve_revision(HubRepo("org/model"), "f" * 40, lock, endpoint="http://127.0.0.1:9")
    assert again == pinned and hub.api_calls() == 2  # a commit is listed once (for its checksums), then pinned


def test_snapshot_matches_folder_case(hub, tmp_path):
    hub.add("org/model", "single_task/VIT-B-16/head_MNISTVal.pt", payload(1000))
    snapshot = resolve_revision(HubRepo("org/model"), None, LockFile(tmp_path / "lock.json"), endpoint=hub.url)
    assert snapshot.find("single_task/ViT-B-16/head_MNISTVal.pt") == "single_task/VIT-B-16/head_MNISTVal.pt"


def test_pinned_listing_resolves_folder_case_without_the_hub(hub, tmp_path):
    """nik-dim/tall_masks spells ViT-B-16's folder VIT-B-16: the listing kept with the pin resolves it later."""
    hub.add("org/model", "single_task/VIT-B-16/head_MNISTVal.pt", payload(1000))
    hub.add("org/model", "single_task/VIT-B-16/MNISTVal/nonlinear_finetuned.pt", payload(2000))
    lock = LockFile(tmp_path / "lock.json")
    keep = lambda name: name.startswith("single_task/")  # noqa: E731
    resolve_revision(HubRepo("org/model"), None, lock, endpoint=hub.url, keep_listing=keep)
    assert lock.revision("org/model@main")["files"] == sorted(hub.files[("org/model", COMMIT)])
    again = resolve_revision(HubRepo("org/model"), None, lock, endpoint="http://127.0.0.1:9", keep_listing=keep)
    assert again.find("single_task/ViT-B-16/MNISTVal/nonlinear_finetuned.pt") == (
        "single_task/VIT-B-16/MNISTVal/nonlinear_finetuned.pt")
    target = tmp_path / "ft.pt"
    download_hub_file(again, "single_task/ViT-B-16/MNISTVal/nonlinear_finetuned.pt", target, lock, endpoint=hub.url,
                      **FAST)
    assert target.read_bytes() == payload(2000) and hub.api_calls() == 1


def test_concurrent_lock_updates_all_land(tmp_path):
    lock = LockFile(tmp_path / "lock.json")
    records = {f"https://example.org/{i}": FileRecord(i, f"{i:064x}") for i in range(16)}
    threads = [threading.Thread(target=lock.record_file, args=item) for item in records.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(lock.file(key) == rec for key, rec in records.items())


def test_cli_downloads_hub_file_with_endpoint_from_environment(hub, tmp_path, monkeypatch):
    data = payload(5000)
    hub.add("datasets/org/data", "data/test-00000-of-00001.parquet", data)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = tmp_path / "test.parquet"
    download_main(["--repo", "org/data", "--repo-type", "dataset", "--filename", "data/test-00000-of-00001.parquet",
                   "--out", str(out), "--lock", str(tmp_path / "lock.json"), "--retries", "0"])
    assert out.read_bytes() == data

