"""Download the TEXTSPAN description pool: one text file of a GitHub repository at a pinned commit.

The file is fetched from ``raw.githubusercontent.com/<repo>/<commit>/<path>`` with
:func:`mass_pipeline.sources.download.download` (resumable, verified, atomic), recorded in the lock file under
``github://<repo>@<commit>/<path>`` with its size and sha256 on the first download, and checked
against that record (and against ``--sha256``/``--size`` when the config gives them) ever after.
A file already at ``--out`` is verified instead of downloaded: that is how to run without network.
``MASS_GITHUB_RAW`` replaces ``https://raw.githubusercontent.com`` (a mirror, or a test server, as
``HF_ENDPOINT`` does for the hub); the lock key does not change with it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mass_pipeline.sources.download import ChecksumMismatch, FileRecord, LockFile, download

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def description_url(repo: str, commit: str, path: str) -> str:
    """Raw-file URL of ``path`` in GitHub repository ``repo`` at ``commit``."""
    base = os.environ.get("MASS_GITHUB_RAW") or "https://raw.githubusercontent.com"
    return f"{base.rstrip('/')}/{repo}/{commit}/{path}"


def lock_key(repo: str, commit: str, path: str) -> str:
    return f"github://{repo}@{commit}/{path}"


def check_descriptions(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` is UTF-8 text with at least one description per line
    (not an HTML error page)."""
    text = path.read_bytes().decode("utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("it holds no description")
    if lines[0].lower().startswith(("<!doctype", "<html")):
        raise ValueError("it is an HTML page, not a list of descriptions")


def read_descriptions(path: str | Path) -> list[str]:
    """The pool's descriptions, one per non-empty line, in file order."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def fetch_descriptions(repo: str, commit: str, path: str, out: str | Path, lock: LockFile,
                       sha256: str | None = None, size: int | None = None) -> FileRecord:
    """Download (or verify) the pool; refuse a moving reference: ``commit`` must be a full sha."""
    if not _COMMIT.match(commit):
        raise ValueError(f"commit {commit!r} is not a 40-hex commit sha; pin the description pool to a commit")
    expected = FileRecord(size, sha256.lower()) if sha256 and size is not None else None
    record = download(description_url(repo, commit, path), out, lock=lock, key=lock_key(repo, commit, path),
                      expected=expected, check=check_descriptions)
    if sha256 and record.sha256 != sha256.lower():
        raise ChecksumMismatch(f"{out} has sha256 {record.sha256}, but the config pins {sha256}; delete {out} "
                               "and rerun, or correct textspan.descriptions.sha256")
    return record
