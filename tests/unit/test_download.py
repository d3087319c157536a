"""Resumable, verified downloads against a real HTTP server on 127.0.0.1.

The server is ``support.hub.HubServer`` (the ``hub`` fixture): the parts of the Hugging Face hub the
pipeline uses, with faults on demand, recording every request so tests can see what was asked for.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
from support.hub import COMMIT, FAST, fetch, payload, sha

from mass.io import ArtifactError
from mass_pipeline.sources.download import (
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
from mass_pipeline.sources.download import main as download_main


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


def test_a_file_served_once_is_deleted_after_its_download_and_a_second_one_is_a_miss(hub, tmp_path):
    """The dress rehearsal's disk saver: the listing still reports the file, a second download fails."""
    data = payload()
    source = tmp_path / "hub" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(data)
    hub.add("org/model", "weights.bin", source, once=True)
    _, target, run = fetch(hub, tmp_path)
    assert run() == FileRecord(len(data), sha(data)) and not source.exists()
    assert hub.misses() == []
    _, again, run_again = fetch(hub, tmp_path / "second")
    with pytest.raises(DownloadError, match="410"):
        run_again()
    assert not again.exists() and [status for _, status in hub.misses()] == [410]


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

