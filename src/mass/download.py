"""Resumable, verified downloads of the pipeline's external inputs (datasets and checkpoints).

Why this exists instead of ``hf_hub_download`` / ``urllib``: a multi-GB download that dies at
90 % must not start over, and a truncated, corrupted or silently replaced file must never be
taken as a finished input by Snakemake or a later rule. So every download

* streams into ``<target>.part`` next to the target and resumes it with an HTTP Range request;
* is verified (size and sha256) before an atomic rename makes ``<target>`` appear, so a killed
  or failed job leaves nothing that a rerun would trust;
* is checked against a lock file (JSON, meant to be committed) that pins what every URL or hub
  file must hash to. The first successful download of an unknown file records it (verified
  against the hub's own LFS sha256 when the hub reports one); every later download must match.

Hub repositories are addressed by revision. A revision left unset (``None``) means "the
repository's default branch, resolved once": the commit it resolves to is written to the lock
file, and from then on every file is fetched at that commit, so a rerun months later gets the
same bytes. URLs follow the Hugging Face layout ``{endpoint}/[datasets/]{repo}/resolve/{commit}/
{file}``; the endpoint comes from an argument or ``HF_ENDPOINT`` (a mirror, or a test server).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from huggingface_hub import hf_hub_url

from mass.io import ArtifactError

DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PERMANENT = {400, 401, 403, 404, 410}


class DownloadError(ArtifactError):
    """A download failed for a reason a retry will not fix; the message names file, URL and fix."""


class ChecksumMismatch(DownloadError):
    """The bytes differ from what the lock file (or the hub) says they must be."""


class DownloadInterrupted(DownloadError):
    """The connection kept failing; the ``.part`` file is kept so a rerun resumes it."""


class _Transient(Exception):
    """A failure worth retrying (dropped connection, 5xx, refused resume)."""


@dataclass(frozen=True)
class FileRecord:
    """What a file must be: its size in bytes and its sha256 (lowercase hex)."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        return cls(int(data["size"]), str(data["sha256"]).lower())


def file_record(path: str | os.PathLike) -> FileRecord:
    """Size and sha256 of a file on disk, read in chunks (checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 23), b""):
            digest.update(block)
    return FileRecord(os.path.getsize(path), digest.hexdigest())


class LockFile:
    """The JSON file pinning hub revisions and the size/sha256 of every downloaded file.

    Layout: ``{"revisions": {"<repo path>@<requested>": {"commit": ..., "files": [...]}},
    "files": {"<url or hf:// key>": {"size": ..., "sha256": ...}}}``. Several Snakemake jobs may
    record entries at once, so updates hold an exclusive ``flock`` and replace the file atomically
    (readers never see a half-written file; a writer that locked a replaced inode retries).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def file(self, key: str) -> FileRecord | None:
        entry = self._read()["files"].get(key)
        return FileRecord.from_json(entry) if entry else None

    def revision(self, key: str) -> dict[str, Any] | None:
        return self._read()["revisions"].get(key)

    def record_file(self, key: str, record: FileRecord) -> None:
        with self._update() as data:
            known = data["files"].get(key)
            if known and FileRecord.from_json(known) != record:
                raise ChecksumMismatch(
                    f"{self.path} already pins {key} to {known}, but the verified download is {record.to_json()}; "
                    "another job recorded a different file. Delete that entry only if the source changed on purpose.")
            data["files"][key] = record.to_json()

    def record_revision(self, key: str, entry: dict[str, Any]) -> None:
        with self._update() as data:
            known = data["revisions"].get(key)
            if known and known.get("commit") != entry.get("commit"):
                raise DownloadError(f"{self.path} already pins {key} to commit {known.get('commit')}, "
                                    f"not {entry.get('commit')}; keep the pinned one or delete the entry on purpose")
            data["revisions"][key] = {**(known or {}), **entry}

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            text = ""
        if not text.strip():
            return {"revisions": {}, "files": {}}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArtifactError(f"lock file {self.path} is not valid JSON ({err}); restore it from git") from err
        data.setdefault("revisions", {})
        data.setdefault("files", {})
        return data

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    continue  # another writer replaced the file while we waited: lock the new one
                data = self._read()
                yield data
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"revisions": dict(sorted(data["revisions"].items())),
                                           "files": dict(sorted(data["files"].items()))}, indent=2) + "\n")
                os.replace(tmp, self.path)
                return
            finally:
                os.close(fd)
        raise DownloadError(f"could not lock {self.path}: it keeps being replaced by another process")


def download(url: str, target: str | os.PathLike, *, lock: LockFile | None = None, key: str | None = None,
             expected: FileRecord | None = None, session: requests.Session | None = None, retries: int = 3,
             timeout: float = 60.0, backoff: float = 1.0, chunk_size: int = 1 << 20) -> FileRecord:
    """Download ``url`` to ``target`` resumably and verified; return the file's record.

    ``key`` names the file in the lock file (default: the URL; hub files use a revision-pinned
    ``hf://`` key so a mirror endpoint does not change it). The lock entry wins over
    ``expected`` (e.g. the hub's LFS hash). An existing ``target`` is verified, not downloaded:
    that is how a user who placed the file themselves avoids the download.
    """
    target = Path(target)
    key = key or url
    known = lock.file(key) if lock else None
    want = known or expected
    if target.exists():
        record = file_record(target)
        if want and record != want:
            raise ChecksumMismatch(
                f"{target} exists but is not the file {key} pinned in {_lock_name(lock)} (expected {want.to_json()}, "
                f"found {record.to_json()}). Delete it and rerun to download it from {url}.")
        if lock and not known:
            lock.record_file(key, record)
        return record

    session = session or requests.Session()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if want and part.exists() and part.stat().st_size > want.size:
        part.unlink()
    resumed = part.exists() and part.stat().st_size > 0
    while True:
        _fill(session, url, target, part, want.size if want else None, retries, timeout, backoff, chunk_size)
        record = file_record(part)
        if want is None or record == want:
            break
        part.unlink()
        if resumed:  # the kept prefix may come from an older version of the file: one clean retry
            resumed = False
            continue
        raise ChecksumMismatch(
            f"download of {url} to {target} does not match {key} as pinned in {_lock_name(lock)}: expected "
            f"{want.to_json()}, got {record.to_json()}. The partial file was deleted. If the source changed on "
            "purpose, delete the entry from the lock file (or pin the old revision) and rerun; otherwise rerun, "
            f"or place the correct file at {target} yourself.")
    os.replace(part, target)
    if lock and not known:
        lock.record_file(key, record)
    return record


def _lock_name(lock: LockFile | None) -> str:
    return str(lock.path) if lock else "the expected checksum"


def _fill(session: requests.Session, url: str, target: Path, part: Path, size: int | None, retries: int,
          timeout: float, backoff: float, chunk_size: int) -> None:
    """Grow ``part`` until the server says it is complete, retrying and resuming on transient errors."""
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        if size is not None and before == size:
            return
        try:
            _stream_once(session, url, target, part, before, timeout, chunk_size)
            return
        except _Transient as err:
            now = part.stat().st_size if part.exists() else 0
            failures = 1 if now > before else failures + 1  # an attempt that made progress starts a new streak
            if failures > retries:
                raise DownloadInterrupted(
                    f"downloading {url} to {target} failed ({err}; {failures} attempt(s) in a row); {now} bytes are "
                    f"kept in {part} and a rerun resumes from there. If the host is unreachable, set HF_ENDPOINT to a "
                    f"mirror or place the file at {target} yourself.") from None
            time.sleep(backoff * 2 ** max(failures - 1, 0))


def _stream_once(session: requests.Session, url: str, target: Path, part: Path, offset: int, timeout: float,
                 chunk_size: int) -> None:
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            status = resp.status_code
            if status == 416 and offset:
                if _range_total(resp.headers.get("Content-Range")) == offset:
                    return
                part.unlink()
                raise _Transient("the server refused to resume the partial file; starting over")
            if status in _PERMANENT:
                raise DownloadError(
                    f"{url} answered HTTP {status} while downloading {target}. Check the repository id, revision "
                    f"and file name (and access rights); or place the file at {target} yourself and rerun.")
            if status == 429 or status >= 500:
                raise _Transient(f"HTTP {status}")
            if status >= 400:
                raise DownloadError(f"{url} answered HTTP {status} while downloading {target}")
            mode = "wb"
            if status == 206:
                if _range_start(resp.headers.get("Content-Range")) != offset:
                    part.unlink(missing_ok=True)
                    raise _Transient("the server resumed at the wrong offset; starting over")
                mode = "ab"
            length = resp.headers.get("Content-Length")
            written = 0
            with open(part, mode) as fh:
                for chunk in resp.iter_content(chunk_size):
                    fh.write(chunk)
                    written += len(chunk)
            if length is not None and written < int(length):
                raise _Transient(f"connection closed after {written} of {length} bytes")
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
        raise _Transient(f"{type(err).__name__}: {err}") from err


def _range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/", header or "")
    return int(match.group(1)) if match else None


def _range_total(header: str | None) -> int | None:
    match = re.match(r"bytes [\d*-]+/(\d+)", header or "")
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- hub layout


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub to talk to: the argument, else ``HF_ENDPOINT``, else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class HubRepo:
    """A hub repository: ``repo_type`` is "model" or "dataset"."""

    repo_id: str
    repo_type: str = "model"

    @property
    def path(self) -> str:
        """Repository path as it appears in hub URLs and lock keys (``datasets/`` prefix for datasets)."""
        return f"datasets/{self.repo_id}" if self.repo_type == "dataset" else self.repo_id

    def file_key(self, commit: str, filename: str) -> str:
        """Lock-file key of one file: endpoint-independent, pinned to a commit."""
        return f"hf://{self.path}@{commit}/{filename}"

    def file_url(self, commit: str, filename: str, endpoint: str | None = None) -> str:
        return hf_hub_url(self.repo_id, filename, repo_type=self.repo_type, revision=commit,
                          endpoint=hub_endpoint(endpoint))


@dataclass(frozen=True)
class Snapshot:
    """A repository at one commit; ``files`` maps file names to the hub's size/sha256 (None if unknown)."""

    repo: HubRepo
    commit: str
    files: dict[str, FileRecord | None] = field(default_factory=dict)

    def find(self, filename: str) -> str:
        """The snapshot's spelling of ``filename`` (folder names' case differs between uploads)."""
        if filename in self.files or not self.files:
            return filename
        matches = [name for name in self.files if name.lower() == filename.lower()]
        return matches[0] if len(matches) == 1 else filename


def resolve_revision(repo: HubRepo, revision: str | None, lock: LockFile, *, endpoint: str | None = None,
                     keep_listing: Callable[[str], bool] | None = None, session: requests.Session | None = None,
                     timeout: float = 60.0) -> Snapshot:
    """Pin ``revision`` (None: the default branch) of ``repo`` to a commit, recorded in ``lock``.

    A revision already pinned in the lock file is used without any network access. Otherwise
    the hub API (``{endpoint}/api/{models|datasets}/{repo}/revision/{rev}?blobs=true``) gives the
    commit and every file's size and LFS sha256. ``keep_listing`` selects file names to store
    with the pin (the parquet files of a dataset), so later runs need no listing either.
    """
    requested = revision or "main"
    pin_key = f"{repo.path}@{requested}"
    pinned = lock.revision(pin_key)
    if pinned and (keep_listing is None or "files" in pinned):
        return Snapshot(repo, pinned["commit"], {name: None for name in pinned.get("files", [])})
    if keep_listing is None and _COMMIT.match(requested):
        return Snapshot(repo, requested)
    at = pinned["commit"] if pinned else requested  # a pin without listing: list that commit, not the branch
    kind = "datasets" if repo.repo_type == "dataset" else "models"
    url = f"{hub_endpoint(endpoint)}/api/{kind}/{repo.repo_id}/revision/{quote(at, safe='')}"
    try:
        resp = (session or requests.Session()).get(url, params={"blobs": "true"}, timeout=timeout)
    except requests.RequestException as err:
        raise DownloadError(
            f"cannot reach the hub at {url} to resolve revision {requested!r} of {repo.path} ({err}). Set HF_ENDPOINT "
            f"to a reachable mirror, or use a lock file ({lock.path}) that already pins {pin_key}.") from err
    if resp.status_code in (401, 404):
        raise DownloadError(f"{url} answered HTTP {resp.status_code}: repository {repo.path} or revision "
                            f"{requested!r} does not exist (or is private). Check the repo id and revision in config.")
    if not resp.ok:
        raise DownloadError(f"{url} answered HTTP {resp.status_code} while resolving {pin_key}; retry later")
    info = resp.json()
    commit = info.get("sha")
    if not commit or not _COMMIT.match(commit):
        raise DownloadError(f"{url} did not return a commit sha for {pin_key}; is the endpoint a Hugging Face hub?")
    files = {sib["rfilename"]: _sibling_record(sib) for sib in info.get("siblings", [])}
    entry: dict[str, Any] = {"commit": commit}
    if keep_listing is not None:
        entry["files"] = sorted(name for name in files if keep_listing(name))
    lock.record_revision(pin_key, entry)
    return Snapshot(repo, commit, files)


def _sibling_record(sibling: dict[str, Any]) -> FileRecord | None:
    lfs = sibling.get("lfs") or {}
    if lfs.get("sha256") and lfs.get("size") is not None:
        return FileRecord(int(lfs["size"]), str(lfs["sha256"]).lower())
    return None


def download_hub_file(snapshot: Snapshot, filename: str, target: str | os.PathLike, lock: LockFile, *,
                      endpoint: str | None = None, **kwargs: Any) -> FileRecord:
    """Download one file of a pinned snapshot (see :func:`download` for ``kwargs``)."""
    name = snapshot.find(filename)
    return download(snapshot.repo.file_url(snapshot.commit, name, endpoint), target, lock=lock,
                    key=snapshot.repo.file_key(snapshot.commit, name), expected=snapshot.files.get(name), **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Download one file (a URL or a hub file) resumably and verified.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="plain URL to download")
    source.add_argument("--repo", help="hub repository id, e.g. nik-dim/tall_masks")
    parser.add_argument("--repo-type", choices=["model", "dataset"], default="model")
    parser.add_argument("--revision", default=None, help="branch, tag or commit; omitted: default branch, pinned")
    parser.add_argument("--filename", help="file inside the hub repository (with --repo)")
    parser.add_argument("--endpoint", default=None, help="hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--sha256", help="expected sha256 of a --url download (else the lock file's or none)")
    parser.add_argument("--size", type=int, help="expected size of a --url download, with --sha256")
    parser.add_argument("--out", required=True, help="where the file goes")
    parser.add_argument("--lock", required=True, help="lock file (JSON) pinning revisions and checksums")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    lock = LockFile(args.lock)
    if args.url:
        expected = None
        if args.sha256:
            if args.size is None:
                parser.error("--sha256 needs --size")
            expected = FileRecord(args.size, args.sha256.lower())
        record = download(args.url, args.out, lock=lock, expected=expected, retries=args.retries,
                          timeout=args.timeout)
    else:
        if not args.filename:
            parser.error("--repo needs --filename")
        snapshot = resolve_revision(HubRepo(args.repo, args.repo_type), args.revision, lock, endpoint=args.endpoint,
                                    timeout=args.timeout)
        record = download_hub_file(snapshot, args.filename, args.out, lock, endpoint=args.endpoint,
                                   retries=args.retries, timeout=args.timeout)
    print(f"{args.out}: {record.size} bytes, sha256 {record.sha256}")


if __name__ == "__main__":
    main()
