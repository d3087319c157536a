"""Faults of the download / fetch / prepare code (issue 20 items 2, 5, 6, 12), against real servers.

Hub-like faults use ``support.hub.HubServer`` (HTML served with status 200, a body cut
short without Content-Length, a listing without checksums, a dropped connection); the others use
small hostile ``http.server`` handlers started here on 127.0.0.1 (a trickle, a redirect loop, a
hub API answering HTML). A full disk is a 1 MiB tmpfs when this process may mount one (root),
and a file size limit (RLIMIT_FSIZE) in a subprocess otherwise as well: both reach the real
write path, which must end in one message naming the file and the fix.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from support.hub import COMMIT, FAST, LocalServer, QuietHandler, fetch, payload, pickled_head, send, sha
from support.parquet import DIGITS, gray, mnist_on_hub, parquet_bytes, write_raw

from mass.encoder import create_clip
from mass.io import ArtifactError
from mass_pipeline.data.prepare import prepare
from mass_pipeline.sources.download import (
    ChecksumMismatch,
    DownloadError,
    DownloadInterrupted,
    FileRecord,
    HubRepo,
    LockFile,
    download,
    resolve_revision,
)
from mass_pipeline.sources.download import main as download_main
from mass_pipeline.sources.fetch import fetch_dataset, fetch_finetuned, fetch_head, safe_torch_load

REPO = Path(__file__).resolve().parents[2]
TALL = "nik-dim/tall_masks"
FT = "single_task/mass-tiny-vit/MNISTVal/nonlinear_finetuned.pt"


class Hostile(LocalServer):
    """A threaded server on 127.0.0.1 whose GET answers are ``routes[path](handler)``."""

    def __init__(self) -> None:
        self.routes: dict = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                route = server.routes.get(path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(Handler)


@pytest.fixture
def hostile():
    server = Hostile().start()
    yield server
    server.stop()


def encoder_bytes(shift: float = 1.0, model: str = "mass-tiny-vit") -> bytes:
    torch.manual_seed(0)
    visual = create_clip(model).visual.state_dict()
    buf = io.BytesIO()
    torch.save(OrderedDict((f"model.visual.{k}", v + shift) for k, v in visual.items()), buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- item 2: nothing bad is pinned


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_served_with_200_is_refused_and_never_pinned(hub, tmp_path, content_type):  # noqa: F811
    data = payload()
    hub.add("org/model", "weights.bin", data)
    hub.no_lfs.add("weights.bin")  # no checksum known yet: only the format check stands in the way
    hub.html["weights.bin"] = content_type
    lock, target, run = fetch(hub, tmp_path)
    with pytest.raises(DownloadError, match="HTML") as err:
        run()
    assert str(target) in str(err.value) and "HF_ENDPOINT" in str(err.value)
    assert lock.file(f"hf://org/model@{COMMIT}/weights.bin") is None
    assert not target.exists() and not target.with_name("weights.bin.part").exists()
    del hub.html["weights.bin"]  # the server recovers: the real file is accepted and pinned
    assert run() == FileRecord(len(data), sha(data))
    assert lock.file(f"hf://org/model@{COMMIT}/weights.bin") == FileRecord(len(data), sha(data))


def test_body_without_its_size_or_a_known_checksum_is_never_pinned(hostile, tmp_path):
    """Issue 31 item 4: a response without Content-Length cut off at 300 KB was accepted and pinned (the
    description pool too, while its sha256 was null). Now such a body is refused unless a checksum is known."""
    data = payload(600_000)

    def route(handler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")  # no Content-Length: the body ends when the connection does
        handler.end_headers()
        handler.wfile.write(data[:300_000])
        handler.close_connection = True

    hostile.routes["/pool.txt"] = route
    url, target, lock = f"{hostile.url}/pool.txt", tmp_path / "pool.txt", LockFile(tmp_path / "lock.json")
    with pytest.raises(DownloadError, match="without announcing its size") as err:
        download(url, target, lock=lock, retries=0, timeout=5.0)
    assert "sha256 and size in the config" in str(err.value) and url in str(err.value)
    assert not target.exists() and not target.with_name("pool.txt.part").exists() and lock.file(url) is None
    sent = data[:300_000]  # with its checksum known (the config's), the same answer is checked by it instead
    assert download(url, target, lock=lock, expected=FileRecord(len(sent), sha(sent)), retries=0,
                    timeout=5.0) == FileRecord(len(sent), sha(sent))


@pytest.mark.parametrize("page", [b"<!-- served by the proxy -->\n<!DOCTYPE html><html><body>502</body></html>",
                                  b"\xef\xbb\xbf \r\n<!-- a --> <!--\nb\n-->\n<html><head><title>Login</title>",
                                  b"<!-- " + b"x" * 5000])
def test_html_page_opening_with_comments_is_refused_and_never_pinned(hostile, tmp_path, page):
    """An HTML error page that began with a comment passed the HTML check and became a 2-line description
    pool; served as text/plain, only its bytes tell."""
    hostile.routes["/pool.txt"] = lambda handler: send(handler, 200, page, {"Content-Type": "text/plain"})
    url, target, lock = f"{hostile.url}/pool.txt", tmp_path / "pool.txt", LockFile(tmp_path / "lock.json")
    with pytest.raises(DownloadError, match="HTML/XML page"):
        download(url, target, lock=lock, retries=0, timeout=5.0)
    assert not target.exists() and lock.file(url) is None


def test_dataset_file_cut_short_without_length_is_refused_and_never_pinned(hub, tmp_path):  # noqa: F811
    train, test = mnist_on_hub(hub, 1)
    names = [f"mnist/{s}-00000-of-00001.parquet" for s in ("train", "test")]
    hub.no_lfs.update(names)
    hub.cut_without_length[names[0]] = len(train) // 2
    lock = LockFile(tmp_path / "sources.lock.json")
    raw = tmp_path / "raw" / "MNIST"
    with pytest.raises(DownloadError, match="without announcing its size") as err:  # before: its format check
        fetch_dataset("MNIST", raw, lock, endpoint=hub.url, retries=0)
    assert names[0].split("/")[-1] in str(err.value) and "nothing was kept or pinned" in str(err.value)
    assert json.loads(lock.path.read_text())["files"] == {}
    assert not (raw / names[0]).exists() and not (raw / "manifest.json").exists()
    del hub.cut_without_length[names[0]]
    fetch_dataset("MNIST", raw, lock, endpoint=hub.url, retries=0)
    assert lock.file(f"hf://datasets/ylecun/mnist@{COMMIT}/{names[0]}") == FileRecord(len(train), sha(train))
    assert (raw / names[1]).read_bytes() == test


def test_parquet_without_the_tasks_columns_is_refused(hub, tmp_path):  # noqa: F811
    other = parquet_bytes(gray(10, 1), np.arange(10), DIGITS, image_col="img", label_col="lbl")
    for split in ("train", "test"):
        hub.add("datasets/ylecun/mnist", f"mnist/{split}-00000-of-00001.parquet", other)
        hub.no_lfs.add(f"mnist/{split}-00000-of-00001.parquet")
    lock = LockFile(tmp_path / "sources.lock.json")
    with pytest.raises(DownloadError, match=r"without column\(s\) \['image', 'label'\]"):
        fetch_dataset("MNIST", tmp_path / "raw", lock, endpoint=hub.url, retries=0)
    assert json.loads(lock.path.read_text())["files"] == {}


def test_failed_hub_fetch_keeps_the_listing_and_the_hubs_checksum_with_the_pin(hub, tmp_path):  # noqa: F811
    """Before: the failed fetch pinned the commit alone, so the suggested rerun pinned whatever came."""
    data = payload()
    hub.add("org/model", "weights.bin", data)
    hub.drop_after["weights.bin"] = 50_000
    lock, out = tmp_path / "lock.json", tmp_path / "weights.bin"
    cli = ["--repo", "org/model", "--filename", "weights.bin", "--endpoint", hub.url, "--out", str(out),
           "--lock", str(lock), "--retries", "0"]
    with pytest.raises(DownloadInterrupted, match="rerun resumes"):
        download_main(cli)
    pin = LockFile(lock).revision("org/model@main")
    assert pin["files"] == ["weights.bin"] and pin["records"]["weights.bin"] == {"size": len(data), "sha256": sha(data)}
    out.with_name("weights.bin.part").unlink()
    hub.add("org/model", "weights.bin", payload(seed=9))  # same commit, other bytes: a bad mirror
    with pytest.raises(ChecksumMismatch):
        download_main(cli)
    assert LockFile(lock).file(f"hf://org/model@{COMMIT}/weights.bin") is None and not out.exists()
    assert hub.api_calls() == 1  # the rerun used the pinned listing, with the hub's checksum


def test_placed_checkpoint_is_loaded_before_it_is_pinned(hub, tmp_path):  # noqa: F811
    hub.add(TALL, FT, encoder_bytes())
    hub.no_lfs.add(FT)
    lock = LockFile(tmp_path / "lock.json")
    out = tmp_path / "ckpt" / "MNIST.safetensors"
    raw = out.with_suffix(".pt")
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(DownloadError, match="was not pinned") as err:
        fetch_finetuned("mass-tiny-vit", "MNIST", TALL, out, lock, endpoint=hub.url, retries=0)
    assert str(raw) in str(err.value) and "corrupt" in str(err.value)
    assert lock.file(f"hf://{TALL}@{COMMIT}/{FT}") is None and raw.exists() and not out.exists()
    raw.write_bytes(b"")  # an empty placed file
    with pytest.raises(DownloadError, match="empty"):
        fetch_finetuned("mass-tiny-vit", "MNIST", TALL, out, lock, endpoint=hub.url, retries=0)
    assert lock.file(f"hf://{TALL}@{COMMIT}/{FT}") is None
    raw.unlink()
    fetch_finetuned("mass-tiny-vit", "MNIST", TALL, out, lock, endpoint=hub.url, retries=0)
    assert lock.file(f"hf://{TALL}@{COMMIT}/{FT}") == FileRecord(len(encoder_bytes()), sha(encoder_bytes()))


def test_checkpoint_that_does_not_convert_is_never_pinned(hub, tmp_path):  # noqa: F811
    """A loadable state dict of another model is refused by the conversion, before the lock entry."""
    buf = io.BytesIO()
    torch.save({"model.visual.proj": torch.zeros(3, 3)}, buf)
    hub.add(TALL, FT, buf.getvalue())
    hub.no_lfs.add(FT)
    lock = LockFile(tmp_path / "lock.json")
    out = tmp_path / "MNIST.safetensors"
    with pytest.raises(DownloadError, match="not a mass-tiny-vit image encoder"):
        fetch_finetuned("mass-tiny-vit", "MNIST", TALL, out, lock, endpoint=hub.url, retries=0)
    assert lock.file(f"hf://{TALL}@{COMMIT}/{FT}") is None
    assert not out.exists() and not out.with_suffix(".pt").exists()


def test_pin_made_from_a_bad_download_is_reported_with_the_fix(hub, tmp_path):  # noqa: F811
    data = b"<html><body>502 Bad Gateway</body></html>"
    hub.add("org/model", "weights.bin", payload())
    lock, target, run = fetch(hub, tmp_path)
    lock.record_file(f"hf://org/model@{COMMIT}/weights.bin", FileRecord(len(data), sha(data)))  # an old poisoned pin
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    with pytest.raises(DownloadError, match="If that pin was made from a bad download") as err:
        run()
    assert str(lock.path) in str(err.value) and f"hf://org/model@{COMMIT}/weights.bin" in str(err.value)


# --------------------------------------------------------------------------- item 5: a trickle


def test_trickling_server_is_given_up_and_what_arrived_is_kept(hostile, tmp_path):
    data = payload(4000)
    mode = {"trickle": True}

    def route(handler) -> None:
        rng = handler.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if not mode["trickle"]:
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if rng else {}
            return send(handler, 206 if rng else 200, data[start:], headers)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for i in range(len(data)):  # one byte every 20 ms: each read returns well within the timeout
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()
            time.sleep(0.02)

    hostile.routes["/file.bin"] = route
    target = tmp_path / "file.bin"
    result: dict = {}

    def run() -> None:
        try:
            download(f"{hostile.url}/file.bin", target, retries=1, backoff=0.0, timeout=5.0, min_rate=200.0,
                     rate_window=0.5)
        except Exception as err:  # noqa: BLE001
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)  # a hang, not a speed check: the rate window gives up within ~1 s
    assert not thread.is_alive(), "the download hung on a trickling server"
    error = result.get("error")
    assert isinstance(error, DownloadInterrupted) and "slower than" in str(error) and "resumes" in str(error)
    part = target.with_name("file.bin.part")
    kept = part.stat().st_size
    assert 0 < kept < len(data) and part.read_bytes() == data[:kept]  # flushed as it arrived (chunk size 1 MiB)
    mode["trickle"] = False
    download(f"{hostile.url}/file.bin", target, retries=0, timeout=5.0)
    assert target.read_bytes() == data and hostile.requests[-1] == ("/file.bin", f"bytes={kept}-")


def trickle(handler, head: bytes, body: bytes, pause: float = 0.3) -> None:
    """Status line and ``head`` (header lines), then ``body``, one byte every ``pause`` s (until the client
    hangs up): each read returns long before a read timeout, so only a deadline ends the request."""
    for i in range(len(head)):
        handler.wfile.write(head[i:i + 1])
        handler.wfile.flush()
        time.sleep(pause)
    for i in range(len(body)):
        handler.wfile.write(body[i:i + 1])
        handler.wfile.flush()
        time.sleep(pause)


def finishes(fn, limit: float = 120.0):
    """``fn``'s exception (None if it returned); fails if it is still running after ``limit`` s (a hang)."""
    result: dict = {}

    def run() -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=limit)
    assert not thread.is_alive(), "the request hung"
    return result.get("error")


def test_response_headers_trickled_before_any_body_end_the_download(hostile, tmp_path):
    """Issue 31 item 3: the minimum rate covered file bodies only; a server trickling its response headers
    hung the fetch with no output (still hanging after 200 s). Now the headers have a deadline (timeout)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Padding: " + b"x" * 400 + b"\r\n\r\n"
    hostile.routes["/file.bin"] = lambda handler: trickle(handler, head, b"0123456789")
    url = f"{hostile.url}/file.bin"
    error = finishes(lambda: download(url, tmp_path / "file.bin", retries=0, backoff=0.0, timeout=2.0))
    assert isinstance(error, DownloadInterrupted) and url in str(error) and "headers" in str(error), error
    assert not (tmp_path / "file.bin").exists()


def test_hub_api_trickling_its_json_ends_with_one_message_naming_the_url(hostile, tmp_path):
    """The hub API answering its listing one byte at a time (1.5 s each in the probe) hung resolve_revision."""
    listing = json.dumps({"sha": COMMIT, "siblings": [{"rfilename": "weights.bin"}]}).encode()
    api = "/api/models/org/model/revision/main"

    def route(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(listing)))
        handler.end_headers()
        trickle(handler, b"", listing)

    hostile.routes[api] = route
    lock = LockFile(tmp_path / "lock.json")
    error = finishes(lambda: resolve_revision(HubRepo("org/model"), None, lock, endpoint=hostile.url, timeout=2.0))
    assert isinstance(error, DownloadError) and f"{hostile.url}{api}" in str(error), error
    assert "slower than" in str(error) and lock.revision("org/model@main") is None
    hostile.routes[api] = lambda handler: trickle(handler, b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 400, b"")
    error = finishes(lambda: resolve_revision(HubRepo("org/model"), None, lock, endpoint=hostile.url, timeout=2.0))
    assert isinstance(error, DownloadError) and "headers" in str(error) and api in str(error), error


# --------------------------------------------------------------------------- item 6: one message, not a traceback


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the RLIMIT_FSIZE test covers it")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_during_a_download_is_one_message(hub, small_disk):  # noqa: F811
    data = payload(3 << 20)
    hub.add("org/model", "weights.bin", data)
    lock = LockFile(small_disk.parent / "lock.json")
    snapshot = resolve_revision(HubRepo("org/model"), None, lock, endpoint=hub.url)
    target = small_disk / "weights.bin"
    from mass_pipeline.sources.download import download_hub_file

    with pytest.raises(DownloadError) as err:
        download_hub_file(snapshot, "weights.bin", target, lock, endpoint=hub.url, **FAST)
    message = str(err.value)
    assert "ENOSPC" in message and "disk full" in message and "Free space" in message
    assert str(target.with_name("weights.bin.part")) in message and hub.url in message
    assert lock.file(f"hf://org/model@{COMMIT}/weights.bin") is None


def test_disk_full_in_a_pipeline_step_is_one_message(tiny_clip, tmp_path, small_disk):
    """Issue 31 item 7: a step whose output fills the disk (svd_cache's safetensors, written by Rust) ended in
    chained tracebacks ending "OSError: [Errno 28] No space left on device" without the path. Now: one
    ArtifactError naming the file and the fix, no chained traceback, nothing left that looks complete."""
    from support.synthetic import perturbed_encoders

    from mass.io import save_tensors

    pre, fts = perturbed_encoders(tiny_clip, 1)
    save_tensors(tmp_path / "pre.safetensors", pre)
    save_tensors(tmp_path / "ft.safetensors", fts[0])
    out = small_disk / "svd" / "A.safetensors"
    done = subprocess.run([sys.executable, "-m", "mass_pipeline.steps.svd_cache", "--pretrained",
                           str(tmp_path / "pre.safetensors"), "--finetuned", str(tmp_path / "ft.safetensors"),
                           "--rank-fraction", "1.0",
                           "--storage-dtype", "float32", "--attention", "in_proj", "--out", str(out), "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mass.io.ArtifactError") and "ENOSPC" in last and "Free space" in last, last
    assert str(out) in last and "During handling" not in done.stderr
    assert list(out.parent.iterdir()) == []  # no output, no sidecar, no part file


@pytest.mark.parametrize("writer", ["npz", "json"])
def test_disk_full_in_any_writer_is_the_same_message(small_disk, writer):
    from mass.io import save_arrays, write_json

    target = small_disk / f"big.{writer}"
    big = np.zeros(400_000)
    with pytest.raises(ArtifactError, match="ENOSPC no space left on the disk holding") as err:
        save_arrays(target, a=big) if writer == "npz" else write_json(target, {"a": big.tolist()})
    assert str(target) in str(err.value) and err.value.__cause__ is None
    assert list(small_disk.iterdir()) == []


FSIZE_SCRIPT = """
import resource, signal, sys
from mass_pipeline.sources.download import DownloadError, download
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    download(sys.argv[1], sys.argv[2], retries=0, timeout=5.0)
except DownloadError as err:
    print(f"{type(err).__name__}: {err}")
    sys.exit(3)
"""


def test_file_size_limit_during_a_download_is_one_message(hub, tmp_path):  # noqa: F811
    hub.add("org/model", "weights.bin", payload(300_000))
    target = tmp_path / "weights.bin"
    done = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, f"{hub.url}/org/model/resolve/main/weights.bin",
                           str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "EFBIG" in done.stdout and str(target) in done.stdout
    assert "Free space" in done.stdout


def test_disk_full_while_preparing_a_dataset_is_one_message(tmp_path, small_disk):
    """Before: the sparse scratch memory map died with SIGBUS (no message at all)."""
    raw = tmp_path / "raw"
    write_raw(raw, "MNIST", parquet_bytes(gray(40, 1), np.arange(40) % 10, DIGITS),
              parquet_bytes(gray(120, 2), np.arange(120) % 10))
    done = subprocess.run([sys.executable, "-m", "mass_pipeline.steps.prepare_dataset", "--task", "MNIST",
                           "--raw", str(raw),
                           "--out", str(small_disk), "--image-size", "64", "--emnist-orientation", "torchvision",
                           "--threads", "1", "--edition", "first"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mass.io.ArtifactError") and "ENOSPC" in last and "Free space" in last
    assert str(small_disk / "MNIST") in last
    assert not list((small_disk / "MNIST").glob(".*scratch*"))


def test_redirect_loop_is_one_message(hostile, tmp_path):
    def loop(handler) -> None:
        send(handler, 302, b"", {"Location": handler.path})

    hostile.routes["/file.bin"] = loop
    hostile.routes["/api/models/org/model/revision/main"] = loop
    url = f"{hostile.url}/file.bin"
    with pytest.raises(DownloadError, match="redirects in a loop") as err:
        download(url, tmp_path / "file.bin", **FAST)
    assert url in str(err.value) and str(tmp_path / "file.bin") in str(err.value)
    with pytest.raises(DownloadError, match="redirects in a loop.*HF_ENDPOINT"):
        resolve_revision(HubRepo("org/model"), None, LockFile(tmp_path / "lock.json"), endpoint=hostile.url)


def test_hub_api_answering_html_is_one_message_and_pins_nothing(hostile, tmp_path):
    hostile.routes["/api/models/org/model/revision/main"] = lambda h: send(
        h, 200, b"<!DOCTYPE html><html><body>Sign in</body></html>", {"Content-Type": "text/html"})
    hostile.routes["/api/models/org/other/revision/main"] = lambda h: send(
        h, 200, json.dumps({"sha": COMMIT}).encode(), {"Content-Type": "application/json"})
    lock = LockFile(tmp_path / "lock.json")
    with pytest.raises(DownloadError, match="did not answer JSON.*text/html.*HF_ENDPOINT") as err:
        resolve_revision(HubRepo("org/model"), None, lock, endpoint=hostile.url)
    assert f"{hostile.url}/api/models/org/model/revision/main" in str(err.value)
    with pytest.raises(DownloadError, match="no file listing"):  # a commit alone is never pinned
        resolve_revision(HubRepo("org/other"), None, lock, endpoint=hostile.url)
    assert lock.revision("org/model@main") is None and lock.revision("org/other@main") is None


def test_corrupt_head_file_is_reported_as_corrupt_not_as_untrusted(tmp_path, monkeypatch):
    good = tmp_path / "head.pt"
    pickled_head(monkeypatch, good, torch.randn(5, 8))
    data = good.read_bytes()
    failures = 0
    for offset in range(40, 600, 7):
        bad = tmp_path / f"head_{offset}.pt"
        bad.write_bytes(data[:offset] + b"\x93\x00\xfe" + data[offset + 3:])
        try:
            safe_torch_load(bad)
        except ArtifactError as err:
            failures += 1
            assert str(bad) in str(err) and "corrupt" in str(err) and "delete it and rerun" in str(err), str(err)
            assert "if you trust it" not in str(err), str(err)
    assert failures > 50


def test_corrupt_head_placed_for_fetch_is_not_pinned(hub, tmp_path, monkeypatch):  # noqa: F811
    name = "single_task/mass-tiny-vit/head_MNISTVal.pt"
    pickled_head(monkeypatch, tmp_path / "head.pt", torch.randn(10, 16))
    data = (tmp_path / "head.pt").read_bytes()
    hub.add(TALL, name, data)
    hub.no_lfs.add(name)
    raw = tmp_path / "published.pt"
    raw.write_bytes(data[:200] + b"\x93\x00\xfe" + data[203:])
    lock = LockFile(tmp_path / "lock.json")
    with pytest.raises(DownloadError) as err:
        fetch_head("mass-tiny-vit", "MNIST", TALL, tmp_path / "published.safetensors", lock, endpoint=hub.url,
                   raw=raw, retries=0)
    assert "corrupt" in str(err.value) and "if you trust it" not in str(err.value) and str(raw) in str(err.value)
    assert lock.file(f"hf://{TALL}@{COMMIT}/{name}") is None


def test_npz_member_with_bad_crc_is_one_message(tmp_path):
    from mass.io import load_arrays, record

    path = tmp_path / "z.npz"
    np.savez(path, a=np.arange(1000, dtype=np.int64))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the member's data: its CRC-32 no longer matches
    path.write_bytes(bytes(data))
    record([path])  # vouched for by hand: its sha256 matches, the archive's own CRC does not
    with pytest.raises(ArtifactError, match="not a readable .npz") as err:
        load_arrays(path)
    assert str(path) in str(err.value) and "CRC" in str(err.value)


# --------------------------------------------------------------------------- item 12: progress in the rule's log


def test_download_log_shows_bytes_rate_and_one_line_per_file(hub, tmp_path):  # noqa: F811
    data = payload(300_000)
    hub.add("org/model", "weights.bin", data)
    log = tmp_path / "download.log"
    with open(log, "w") as fh:  # as the rules run it: stdout and stderr to the log file
        subprocess.run([sys.executable, "-m", "mass_pipeline.sources.download", "--repo", "org/model", "--filename",
                        "weights.bin", "--endpoint", hub.url, "--out", str(tmp_path / "weights.bin"), "--lock",
                        str(tmp_path / "lock.json"), "--retries", "0"], stdout=fh, stderr=subprocess.STDOUT,
                       check=True, timeout=120)
    text = log.read_text()
    assert "weights.bin: 100%" in text and "293k/293k" in text and "B/s" in text  # bytes, total, rate
    assert f"{tmp_path / 'weights.bin'}: downloaded and verified (293.0 KiB in" in text


def test_prepare_log_shows_images_and_one_line_per_file(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw(raw, "MNIST", parquet_bytes(gray(30, 1), np.arange(30) % 10, DIGITS),
              parquet_bytes(gray(12, 2), np.arange(12) % 10))
    prepare("MNIST", raw, tmp_path / "data", image_size=28, splits=("val", "test"))
    err = capsys.readouterr().err
    assert "MNIST test: 100%" in err and "12/12" in err and "img/s" in err
    assert "MNIST val: 100%" in err and "3/3" in err  # train rows not stored are not decoded or counted
    for split, count in (("test", 12), ("val", 3)):
        stored = tmp_path / "data" / "MNIST" / f"{split}_images.npy"
        assert f"wrote {stored} and {split}_labels.npy ({count} images" in err
