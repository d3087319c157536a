"""Resumable, verified downloads of the pipeline's external inputs (datasets and checkpoints).

Why this exists instead of ``hf_hub_download`` / ``urllib``: a multi-GB download that dies at
90 % must not start over, and a truncated, corrupted or silently replaced file must never be
taken as a finished input by Snakemake or a later rule. So every download

* streams into ``<target>.part`` next to the target and resumes it with an HTTP Range request;
* is verified (size and sha256) before an atomic rename makes ``<target>`` appear, so a killed
  or failed job leaves nothing that a rerun would trust;
* is checked against a lock file (JSON, meant to be committed) that pins what every URL or hub
  file must hash to. The first successful download of an unknown file records it (verified
  against the hub's own size and LFS sha256 when the hub reports them); every later download
  must match;
* is refused, never recorded, when it is not what it should be: an HTML page (an error or login
  page served with status 200, or any ``text/html`` answer), an empty body, or a file that fails
  the caller's format check (``check``: a parquet file opens and has its columns, a checkpoint
  loads as tensors). The check also runs on a file the user placed, before it is pinned, and on a
  pinned file, so a pin made from a bad download is reported;
* gives up on a server that trickles (slower than ``min_rate`` bytes/s over ``rate_window``
  seconds, counted as a failed attempt), writes every received chunk through to the ``.part``
  file (a resume keeps what arrived), and shows a tqdm bar (bytes, rate, ETA) on stderr, which the
  rules send to their log, plus one line per finished file.

Hub repositories are addressed by revision. A revision left unset (``None``) means "the
repository's default branch, resolved once": the commit it resolves to is written to the lock
file together with the file listing and the hub's size/sha256 of each listed file (never a
commit without its listing), and from then on every file is fetched at that commit and checked
against those, so a rerun months later gets the same bytes. URLs follow the Hugging Face
layout ``{endpoint}/[datasets/]{repo}/resolve/{commit}/{file}``; the endpoint comes from an
argument or ``HF_ENDPOINT`` (a mirror, or a test server).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from huggingface_hub import hf_hub_url
from tqdm import tqdm

from mass.io import ArtifactError, record_checksum

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


class _Slow(_Transient):
    """The server sends too slowly; counts as a failed attempt even though bytes arrived."""


class _NoHeaders(_Transient):
    """The status line and headers did not arrive within the deadline."""


class _RateRule:
    """Fail (:class:`_Slow`) when fewer than ``min_rate * window`` bytes arrive in any ``window`` seconds."""

    def __init__(self, min_rate: float, window: float) -> None:
        self.min_rate, self.window = min_rate, window
        self.start, self.bytes = time.monotonic(), 0

    def update(self, received: int) -> None:
        self.bytes += received
        now = time.monotonic()
        if now - self.start >= self.window:
            if self.bytes < self.min_rate * (now - self.start):
                raise _Slow(f"the server sent {self.bytes} bytes in {now - self.start:.0f} s, slower than the "
                            f"minimum of {self.min_rate:.0f} bytes/s")
            self.start, self.bytes = now, 0


def _get_within(session: requests.Session, url: str, deadline: float, **kwargs: Any) -> requests.Response:
    """``session.get(url, stream=True, **kwargs)`` whose status line and headers must all arrive within
    ``deadline`` seconds. A read timeout bounds each read only, so a server trickling its headers a byte at
    a time never trips it; the request runs in a daemon thread, abandoned past the deadline."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["response"] = session.get(url, stream=True, **kwargs)
        except BaseException as err:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name=f"GET {url}").start()
    if not done.wait(deadline):
        raise _NoHeaders(f"no complete response headers within {deadline:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["response"]


class _NotTheFile(Exception):
    """The bytes are not what the file should be (HTML, empty, failed format check)."""


@dataclass(frozen=True)
class FileRecord:
    """What a file must be: its size in bytes and its sha256 (lowercase hex; "" when only the size
    is known, as for a small non-LFS file the hub lists)."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}

    def matches(self, record: FileRecord) -> bool:
        """True if ``record`` (a file on disk) is this file: same size and, when known, same sha256."""
        return record.size == self.size and (not self.sha256 or record.sha256 == self.sha256)

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
                try:
                    tmp.write_text(json.dumps({"revisions": dict(sorted(data["revisions"].items())),
                                               "files": dict(sorted(data["files"].items()))}, indent=2) + "\n")
                    os.replace(tmp, self.path)
                except OSError as err:
                    tmp.unlink(missing_ok=True)
                    raise DownloadError(f"cannot write the lock file {self.path} ({_os_error(err)}); it is unchanged. "
                                        "Free space on that disk (or fix its permissions) and rerun.") from err
                return
            finally:
                os.close(fd)
        raise DownloadError(f"could not lock {self.path}: it keeps being replaced by another process")


def download(url: str, target: str | os.PathLike, *, lock: LockFile | None = None, key: str | None = None,
             expected: FileRecord | None = None, check: Callable[[Path], Any] | None = None,
             session: requests.Session | None = None, retries: int = 3, timeout: float = 60.0,
             backoff: float = 1.0, chunk_size: int = 1 << 20, min_rate: float = 4096.0,
             rate_window: float = 60.0) -> FileRecord:
    """Download ``url`` to ``target`` resumably and verified; return the file's record.

    ``key`` names the file in the lock file (default: the URL; hub files use a revision-pinned
    ``hf://`` key so a mirror endpoint does not change it). The lock entry wins over
    ``expected`` (e.g. the hub's LFS hash). ``check(path)`` is the format check of what the
    file should be (it raises if the file is not that; what it returns is ignored, so a caller
    may keep what it loaded); it runs before anything is pinned or renamed into place. An
    existing ``target`` is verified and checked, not downloaded: that is how a user who placed
    the file themselves avoids the download. ``min_rate``/``rate_window``: an attempt that
    receives fewer than ``min_rate * rate_window`` bytes in any ``rate_window`` seconds fails.
    """
    target = Path(target)
    key = key or url
    known = lock.file(key) if lock else None
    want = known or expected
    if target.exists():
        record = file_record(target)
        if want and not want.matches(record):
            raise ChecksumMismatch(
                f"{target} exists but is not the file {key} pinned in {_lock_name(lock)} (expected {want.to_json()}, "
                f"found {record.to_json()}). Delete it and rerun to download it from {url}.")
        try:
            _check_file(target, target, want, check)
        except _NotTheFile as why:
            if known:
                raise DownloadError(
                    f"{target} matches {key} as pinned in {lock.path}, but {why}. If that pin was made from a bad "
                    f"download, delete {target} and the entry {key!r} from {lock.path}, then rerun.") from None
            raise DownloadError(
                f"{target} is not the file it should be: {why}. It was not pinned in {_lock_name(lock)}. Delete it "
                f"(a rerun downloads {url}) or replace it with the correct file.") from None
        if lock and not known:
            lock.record_file(key, record)
        record_checksum(target, record.sha256)  # its readers check it as they check every artifact
        _say(f"{target}: already present, verified ({_size(record.size)}, sha256 {record.sha256[:16]}...)")
        return record

    session = session or requests.Session()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if want and part.exists() and part.stat().st_size > want.size:
        part.unlink()
    resumed = part.exists() and part.stat().st_size > 0
    started = time.monotonic()
    while True:
        sized = _fill(session, url, target, part, want.size if want else None, retries, timeout, backoff,
                      chunk_size, min_rate, rate_window)
        if want is None and not sized:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url} sent {target.name} without announcing its size (no Content-Length), and no checksum of it is "
                f"known (lock file, hub listing or config): a transfer cut short could not be told from the whole "
                f"file, so nothing was kept or pinned. Give the file's sha256 and size in the config where it asks "
                f"for them (e.g. textspan.descriptions), or place the verified file at {target} yourself.")
        record = file_record(part)
        if want is None or want.matches(record):
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
    try:
        _check_file(part, target, want, check)
    except _NotTheFile as why:
        part.unlink(missing_ok=True)
        if known:
            raise DownloadError(
                f"download of {url} to {target} matches {key} as pinned in {lock.path}, but {why}. The download was "
                f"deleted. If that pin was made from a bad download, delete the entry {key!r} from {lock.path} and "
                "rerun.") from None
        raise DownloadError(
            f"download of {url} to {target} is not the file it should be: {why}. Nothing was pinned in "
            f"{_lock_name(lock)} and the download was deleted. The server sent something else (an error or login "
            "page, a transfer cut short, a proxy's answer): check the URL or HF_ENDPOINT and rerun, or place the "
            f"correct file at {target} yourself.") from None
    record_checksum(target, record.sha256)  # first: a kill in between leaves a checksum no file matches
    os.replace(part, target)
    if lock and not known:
        lock.record_file(key, record)
    elapsed = time.monotonic() - started
    _say(f"{target}: downloaded and verified ({_size(record.size)} in {elapsed:.0f} s, sha256 "
         f"{record.sha256[:16]}...)")
    return record


def _check_file(path: Path, target: Path, want: FileRecord | None, check: Callable[[Path], Any] | None) -> None:
    """Raise :class:`_NotTheFile` (saying why) unless ``path`` passes the format checks."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head and not (want and want.size == 0):
        raise _NotTheFile("it is empty")
    if _is_markup(head):
        raise _NotTheFile(f"it is an HTML/XML page, not the file (it starts with {head[:60]!r})")
    if check is None:
        return
    try:
        with _named_like(path, target) as named:
            check(named)
    except Exception as err:  # noqa: BLE001  (any failure of the format check means: not the file)
        raise _NotTheFile(f"its format check failed ({type(err).__name__}: {err})") from err


def _is_markup(head: bytes) -> bool:
    """Whether a file's first bytes are an HTML/XML page: after a byte-order mark, whitespace and any
    leading comments (an error page may open with ``<!-- ... -->``); an unterminated comment counts."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    while start.startswith(b"<!--"):
        end = start.find(b"-->")
        if end < 0:
            return True
        start = start[end + 3:].lstrip(b" \t\r\n")
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<?xml"))


@contextlib.contextmanager
def _named_like(path: Path, target: Path) -> Iterator[Path]:
    """``path`` under a hidden name ending like ``target`` (readers pick the format by extension)."""
    if path == target or not target.suffix:
        yield path
        return
    link = target.with_name(f".{target.stem}.checking{target.suffix}")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links
        link.symlink_to(path.name)
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _os_error(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0, "")
    hint = " (disk full)" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (
        " (file size limit)" if err.errno == errno.EFBIG else "")
    return f"{name}{': ' if name else ''}{err.strerror or err}{hint}"


def _lock_name(lock: LockFile | None) -> str:
    return str(lock.path) if lock else "the expected checksum"


def _fill(session: requests.Session, url: str, target: Path, part: Path, size: int | None, retries: int,
          timeout: float, backoff: float, chunk_size: int, min_rate: float, rate_window: float) -> bool:
    """Grow ``part`` until the server says it is complete, retrying and resuming on transient errors.
    Returns whether the file's full size was known (``size``, or announced by the server)."""
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        if size is not None and before == size:
            return True
        try:
            return _stream_once(session, url, target, part, before, timeout, chunk_size, min_rate,
                                rate_window) or size is not None
        except _Transient as err:
            now = part.stat().st_size if part.exists() else 0
            # an attempt that made progress starts a new streak, unless it was too slow
            failures = 1 if now > before and not isinstance(err, _Slow) else failures + 1
            if failures > retries:
                raise DownloadInterrupted(
                    f"downloading {url} to {target} failed ({err}; {failures} attempt(s) in a row); {now} bytes are "
                    f"kept in {part} and a rerun resumes from there. If the host is unreachable or slow, set "
                    f"HF_ENDPOINT to a mirror or place the file at {target} yourself.") from None
            time.sleep(backoff * 2 ** max(failures - 1, 0))


def _stream_once(session: requests.Session, url: str, target: Path, part: Path, offset: int, timeout: float,
                 chunk_size: int, min_rate: float = 0.0, rate_window: float = 60.0) -> bool:
    """One attempt; returns whether the server announced the file's full size (Content-Length)."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with _get_within(session, url, timeout, headers=headers, timeout=timeout) as resp:
            status = resp.status_code
            if status == 416 and offset:
                if _range_total(resp.headers.get("Content-Range")) == offset:
                    return True
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
            content_type = resp.headers.get("Content-Type", "")
            if "html" in content_type.lower():
                raise DownloadError(
                    f"{url} answered with an HTML page (Content-Type {content_type}, HTTP {status}) instead of the "
                    f"file for {target}: an error or login page, a proxy's answer, or an endpoint that is not a "
                    f"Hugging Face hub. Nothing was written or pinned. Check the URL or HF_ENDPOINT and rerun, or "
                    f"place the file at {target} yourself.")
            mode = "wb"
            if status == 206:
                if _range_start(resp.headers.get("Content-Range")) != offset:
                    part.unlink(missing_ok=True)
                    raise _Transient("the server resumed at the wrong offset; starting over")
                mode = "ab"
            else:
                offset = 0
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            _receive(resp, url, target, part, mode, offset, total, chunk_size, min_rate, rate_window)
            return total is not None
    except requests.TooManyRedirects as err:
        raise DownloadError(
            f"{url} redirects in a loop ({err}) while downloading {target}: the server or a proxy is misconfigured. "
            f"Try again later, set HF_ENDPOINT to a mirror, or place the file at {target} yourself.") from None
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError) as err:
        raise _Transient(f"{type(err).__name__}: {err}") from err


def _receive(resp: requests.Response, url: str, target: Path, part: Path, mode: str, offset: int,
             total: int | None, chunk_size: int, min_rate: float, rate_window: float) -> None:
    """Write the body to ``part`` as it arrives (each chunk flushed), with a progress bar and the rate rule."""
    written = 0
    tty = sys.stderr.isatty()
    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
               file=sys.stderr, disable=False, mininterval=0.5 if tty else 10.0, dynamic_ncols=tty,
               ascii=not tty)
    rate = _RateRule(min_rate, rate_window)
    try:
        try:
            fh = open(part, mode, buffering=0)  # noqa: SIM115  (unbuffered: what arrived is in the file)
        except OSError as err:
            raise _write_error(err, url, target, part) from None
        with fh:
            while True:
                chunk = resp.raw.read1(chunk_size, decode_content=True)  # what has arrived, not a full chunk
                if not chunk:
                    break
                try:
                    view = memoryview(chunk)
                    while view:
                        view = view[fh.write(view):]
                except OSError as err:
                    raise _write_error(err, url, target, part) from None
                written += len(chunk)
                bar.update(len(chunk))
                rate.update(len(chunk))
    finally:
        bar.close()
    if total is not None and offset + written < total:
        raise _Transient(f"connection closed after {written} of {total - offset} bytes")


def _write_error(err: OSError, url: str, target: Path, part: Path) -> DownloadError:
    kept = part.stat().st_size if part.exists() else 0
    return DownloadError(
        f"cannot write {part} while downloading {url} ({_os_error(err)}). Free space on that disk (or put "
        f"{target.parent} on a bigger one) and rerun: the {kept} bytes already in {part} are kept and the download "
        "resumes from there.")


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


def is_commit(revision: str) -> bool:
    """Whether ``revision`` is a full commit sha (which no push can move)."""
    return bool(_COMMIT.match(revision))


def resolve_revision(repo: HubRepo, revision: str | None, lock: LockFile, *, endpoint: str | None = None,
                     keep_listing: Callable[[str], bool] | None = None, session: requests.Session | None = None,
                     timeout: float = 60.0, min_rate: float = 4096.0) -> Snapshot:
    """Pin ``revision`` (None: the default branch) of ``repo`` to a commit, recorded in ``lock``.

    A revision already pinned in the lock file is used without any network access. Otherwise
    the hub API (``{endpoint}/api/{models|datasets}/{repo}/revision/{rev}?blobs=true``) gives the
    commit and every file's size and LFS sha256. The pin is recorded together with the listing:
    the names ``keep_listing`` selects (None: all files; e.g. the parquet files of a dataset) and,
    under ``records``, the hub's size and sha256 of each, so later runs need no listing and every
    download is still checked against the hub's own checksums. A commit sha is listed once too. An
    answer without a listing pins nothing. The answer's headers must arrive within ``timeout`` seconds
    and its body at ``min_rate`` bytes/s or more over every ``timeout`` seconds.
    """
    requested = revision or "main"
    pin_key = f"{repo.path}@{requested}"
    pinned = lock.revision(pin_key)
    if pinned and "files" in pinned:
        records = {name: FileRecord.from_json(rec) for name, rec in (pinned.get("records") or {}).items()}
        return Snapshot(repo, pinned["commit"], {name: records.get(name) for name in pinned["files"]})
    at = pinned["commit"] if pinned else requested  # a pin without listing: list that commit, not the branch
    kind = "datasets" if repo.repo_type == "dataset" else "models"
    url = f"{hub_endpoint(endpoint)}/api/{kind}/{repo.repo_id}/revision/{quote(at, safe='')}"
    stalled = (f"Retry later, set HF_ENDPOINT to a working hub or mirror, or use a lock file ({lock.path}) that "
               f"already pins {pin_key}.")
    try:
        resp = _get_within(session or requests.Session(), url, timeout, params={"blobs": "true"}, timeout=timeout)
        body = _read_answer(resp, min_rate, timeout)
    except _Transient as err:
        raise DownloadError(f"{url} stalled while resolving revision {requested!r} of {repo.path}: {err}. "
                            f"{stalled}") from None
    except requests.TooManyRedirects as err:
        raise DownloadError(
            f"{url} redirects in a loop ({err}) while resolving revision {requested!r} of {repo.path}: the hub or a "
            f"proxy is misconfigured. Set HF_ENDPOINT to a working hub or mirror and rerun.") from None
    except requests.RequestException as err:
        raise DownloadError(
            f"cannot reach the hub at {url} to resolve revision {requested!r} of {repo.path} ({err}). Set HF_ENDPOINT "
            f"to a reachable mirror, or use a lock file ({lock.path}) that already pins {pin_key}.") from err
    if resp.status_code in (401, 404):
        raise DownloadError(f"{url} answered HTTP {resp.status_code}: repository {repo.path} or revision "
                            f"{requested!r} does not exist (or is private). Check the repo id and revision in config.")
    if not resp.ok:
        raise DownloadError(f"{url} answered HTTP {resp.status_code} while resolving {pin_key}; retry later")
    not_hub = (f"Is {hub_endpoint(endpoint)} a Hugging Face hub or mirror? Set HF_ENDPOINT to one (or unset it for "
               "huggingface.co) and rerun; nothing was pinned.")
    try:
        info = json.loads(body)
    except ValueError:
        raise DownloadError(
            f"{url} did not answer JSON (Content-Type {resp.headers.get('Content-Type', 'none')}, starting "
            f"{body[:60]!r}): a login or error page, a proxy's answer, or not a hub API. {not_hub}") from None
    commit = info.get("sha") if isinstance(info, dict) else None
    if not commit or not _COMMIT.match(commit):
        raise DownloadError(f"{url} did not return a commit sha for {pin_key}. {not_hub}")
    siblings = info.get("siblings")
    if not isinstance(siblings, list) or not all(isinstance(s, dict) and "rfilename" in s for s in siblings):
        raise DownloadError(f"{url} returned commit {commit} for {pin_key} but no file listing. {not_hub}")
    files = {sib["rfilename"]: _sibling_record(sib) for sib in siblings}
    kept = sorted(name for name in files if keep_listing is None or keep_listing(name))
    entry: dict[str, Any] = {"commit": commit, "files": kept,
                             "records": {name: files[name].to_json() for name in kept if files[name]}}
    lock.record_revision(pin_key, entry)
    return Snapshot(repo, commit, files)


def _read_answer(resp: requests.Response, min_rate: float, window: float) -> bytes:
    """A (small) API answer's whole body, under the rate rule; the connection is released either way."""
    rate, parts = _RateRule(min_rate, window), []
    try:
        while chunk := resp.raw.read1(1 << 16, decode_content=True):
            parts.append(chunk)
            rate.update(len(chunk))
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        raise _Transient(f"{type(err).__name__}: {err}") from err
    finally:
        resp.close()
    return b"".join(parts)


def _sibling_record(sibling: dict[str, Any]) -> FileRecord | None:
    """The hub's size and LFS sha256 of a listed file; the size alone for a non-LFS file."""
    lfs = sibling.get("lfs") or {}
    if lfs.get("sha256") and lfs.get("size") is not None:
        return FileRecord(int(lfs["size"]), str(lfs["sha256"]).lower())
    if sibling.get("size") is not None:
        return FileRecord(int(sibling["size"]), "")
    return None


def download_hub_file(snapshot: Snapshot, filename: str, target: str | os.PathLike, lock: LockFile, *,
                      endpoint: str | None = None, **kwargs: Any) -> FileRecord:
    """Download one file of a pinned snapshot (see :func:`download` for ``kwargs``, e.g. ``check``)."""
    name = snapshot.find(filename)
    return download(snapshot.repo.file_url(snapshot.commit, name, endpoint), target, lock=lock,
                    key=snapshot.repo.file_key(snapshot.commit, name), expected=snapshot.files.get(name), **kwargs)


def add_network_args(parser: argparse.ArgumentParser) -> None:
    """Options of a download's patience with the network (this tool's and the download steps')."""
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--min-rate", type=float, default=4096.0,
                        help="give an attempt up when slower than this many bytes/s over --rate-window seconds")
    parser.add_argument("--rate-window", type=float, default=60.0)


def network_options(args: argparse.Namespace) -> dict[str, float]:
    """The keyword arguments of :func:`download` that :func:`add_network_args`'s options set."""
    return {"retries": args.retries, "timeout": args.timeout, "min_rate": args.min_rate,
            "rate_window": args.rate_window}


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
    add_network_args(parser)
    args = parser.parse_args(argv)
    net = network_options(args)
    lock = LockFile(args.lock)
    if args.url:
        expected = None
        if args.sha256:
            if args.size is None:
                parser.error("--sha256 needs --size")
            expected = FileRecord(args.size, args.sha256.lower())
        record = download(args.url, args.out, lock=lock, expected=expected, **net)
    else:
        if not args.filename:
            parser.error("--repo needs --filename")
        snapshot = resolve_revision(HubRepo(args.repo, args.repo_type), args.revision, lock, endpoint=args.endpoint,
                                    timeout=args.timeout)
        record = download_hub_file(snapshot, args.filename, args.out, lock, endpoint=args.endpoint, **net)
    print(f"{args.out}: {record.size} bytes, sha256 {record.sha256}")


if __name__ == "__main__":
    main()
