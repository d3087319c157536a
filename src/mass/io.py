"""Atomic, checked reading and writing of every artifact the pipeline produces.

Every writer goes through :func:`atomic_path`: the data lands in a hidden temporary file next to
the target (``.<name>.<random>.part``, created with the umask's permissions like any other file)
and is renamed into place only once complete, so a killed job never leaves a file that Snakemake
or a later rule could take as finished; the next write of the same target removes what such a
killed write left behind.

Before the rename, the file's sha256 is recorded next to it in ``.<name>.sha256`` (the format of
``sha256sum``, so ``sha256sum -c`` checks it by hand), and every reader here verifies it first: a
file changed after it was written (a bad disk, a copy cut short, bytes overwritten in place, which
safetensors, ``.npy`` and JSON readers would otherwise load as good) raises :class:`ArtifactError`
naming the file and the fix. A file without its checksum is refused too (a copy with ``cp dir/*``
leaves the hidden checksum files behind, and a file whose checksum is gone could be anything): the
message says how to remake it, or how to record the checksum of a file known to be good
(``python -m mass.io record FILE...``). Downloads and files placed by hand get theirs when they are
verified against the lock (:mod:`mass_pipeline.sources.download`). ``python -m mass.io verify DIR...`` checks every
artifact under the given folders and reports the ones without a checksum (logs and Snakemake's
benchmark tables are not artifacts).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FIX = "delete it and rerun the rule that makes it (rerun the same snakemake command: it remakes missing files)"
_CHUNK = 1 << 22
# Files verified by this process, by (path, device, inode, size, mtime): a step that reads a
# file twice hashes it once.
_VERIFIED: set[tuple] = set()


class ArtifactError(RuntimeError):
    """A required file is missing, truncated or inconsistent; the message says which and how to fix."""


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the sha256 of ``path`` is recorded: ``.<name>.sha256`` in the same folder."""
    path = Path(path)
    return path.parent / f".{path.name}.sha256"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, streamed in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _create_temp(target: Path) -> Path:
    """A new empty hidden ``.part`` file next to ``target``, with the umask's permissions (mkstemp's
    would be 0600: group members of a shared results folder could not read what a job wrote)."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it back is racy)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_parts(target: str | os.PathLike) -> list[Path]:
    """Remove the ``.part`` files a killed write of ``target`` left behind (Snakemake runs one job
    per output at a time, so no other write of ``target`` is in progress)."""
    target = Path(target)
    stale = [Path(p) for p in glob.glob(str(target.parent / f".{glob.escape(target.name)}.*.part"))]
    for part in stale:
        part.unlink(missing_ok=True)
    return stale


def _writer() -> str:
    import __main__

    spec = getattr(__main__, "__spec__", None)
    return f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name or "python"


_HOLDS = "# holds: "


def record_checksum(target: Path, digest: str, holds: Mapping[str, str] | None = None) -> None:
    """Write ``target``'s sidecar: the sha256 its readers check (atomically, as every artifact), and, for a
    format without metadata of its own (``.npy``), what the file holds (:func:`held_by`) as a comment line
    (``sha256sum -c`` skips comments)."""
    sidecar = checksum_path(target)
    tmp = _create_temp(sidecar)
    held = f"{_HOLDS}{json.dumps(dict(sorted(holds.items())))}\n" if holds else ""
    try:
        tmp.write_text(f"# written by {_writer()}\n{held}{digest}  {target.name}\n")
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How writers that are not Python's own file objects report a full disk: safetensors' Rust IoError, torch's
# and numpy's wrapped messages.
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large", "StorageFull", "os error 28")


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) says the disk or the quota is full, or the file size limit hit."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_SPACE or any(t in str(err) for t in _NO_SPACE_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def no_space_error(err: BaseException, path: str | os.PathLike, needed: int | None = None) -> ArtifactError:
    """The one message of a write that ran out of space: which file, the disk's free space, the fix."""
    path = Path(path)
    amount = f" (it needs {needed / 2**30:.2f} GiB)" if needed else ""
    code = errno.errorcode.get(getattr(err, "errno", None) or 0, "") or "ENOSPC"
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = ""
    return ArtifactError(f"cannot write {path}{amount}: {code} no space left on the disk holding {path.parent}{free}. "
                         "Free space on that disk (or move results/ and resources/ to a bigger one) and rerun the "
                         "same command; nothing incomplete was kept.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, checksum: bool = True,
                holds: Mapping[str, str] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success, record its sha256 (unless ``checksum``
    is false; with ``holds``, what it holds: :func:`record_checksum`) and rename it onto ``path``. The
    checksum is recorded first, so a write killed in between leaves a checksum that no file matches, never a
    file without its checksum. A write that runs out of disk space (in the writer or here) ends in one
    :class:`ArtifactError` naming the file, with nothing left behind."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(target)
        tmp_path = _create_temp(target)
    except OSError as err:
        if is_no_space(err):
            raise no_space_error(err, target) from None
        raise
    try:
        yield tmp_path
        # the writer may have replaced the file with its own (safetensors creates it 0600)
        os.chmod(tmp_path, 0o666 & ~_umask())
        if checksum:
            record_checksum(target, file_sha256(tmp_path), holds)
        else:
            checksum_path(target).unlink(missing_ok=True)
        os.replace(tmp_path, target)
    except Exception as err:
        if is_no_space(err):
            checksum_path(target).unlink(missing_ok=True)
            raise no_space_error(err, target) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _sidecar_lines(path: str | os.PathLike) -> list[str] | None:
    """The lines of ``path``'s checksum file, or None when it has none."""
    sidecar = checksum_path(path)
    try:
        return sidecar.read_text().splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"cannot read {sidecar}, the checksum of {path} ({err}); {FIX}") from err


def recorded_checksum(path: str | os.PathLike) -> str | None:
    """The sha256 recorded when ``path`` was written, or None when none was recorded."""
    sidecar = checksum_path(path)
    lines = _sidecar_lines(path)
    if lines is None:
        return None
    entries = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    if len(entries) != 1 or len(entries[0]) != 64:
        raise ArtifactError(f"{sidecar}, the checksum of {path}, is damaged; {FIX}")
    return entries[0].lower()


def verify(path: str | os.PathLike) -> None:
    """Raise :class:`ArtifactError` when ``path`` is missing, has no recorded checksum, or differs from the
    checksum recorded when it was written."""
    path = Path(path)
    _require(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    expected = recorded_checksum(path)
    if expected is None:
        raise ArtifactError(
            f"{path} has no recorded sha256 ({checksum_path(path).name} is missing): it was not written by this "
            "pipeline, or it was copied without the hidden checksum files next to it (`cp dir/*` skips them; "
            f"copy whole folders with `cp -a`); {FIX}; or, if you know the file is good, record its checksum with "
            f"`python -m mass.io record {path}`")
    if file_sha256(path) != expected:
        raise ArtifactError(f"{path} does not match the sha256 recorded when it was written "
                            f"({checksum_path(path).name}): it was changed or corrupted since; {FIX}")
    _VERIFIED.add(key)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    verify(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); {FIX}") from err


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors (no pickle), atomically; the same tensors and metadata
    give the same bytes (:func:`_sort_metadata`)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata or {}))
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header in place with its metadata keys sorted.

    safetensors (0.8) serialises the metadata from a Rust HashMap, whose order changes from process to
    process, so two identical runs wrote different bytes and sidecars. The tensors' entries keep their
    order; the same keys and values in another order take the same bytes, so the header keeps its length.
    """
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise RuntimeError(f"{path}: the re-serialised safetensors header is longer than safetensors' own "
                               f"({len(text)} > {size} bytes); report this with the metadata written")
        fh.seek(8)
        fh.write(text.ljust(size))


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    verify(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{path} is not a readable safetensors file ({err}); {FIX}") from err


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A safetensors file's metadata (what it holds: task, model, source, ...), from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{path} is not a readable safetensors file ({err}); {FIX}") from err


def held_by(path: str | os.PathLike) -> dict[str, str]:
    """What an artifact says it holds (task, model, split, ...): a safetensors file's metadata, or the
    ``# holds:`` line its checksum file got when it was written (formats without metadata, ``.npy``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_metadata(path)
    for line in _sidecar_lines(path) or []:
        if line.startswith(_HOLDS):
            try:
                held = json.loads(line[len(_HOLDS):])
            except json.JSONDecodeError as err:
                raise ArtifactError(f"{checksum_path(path)}, the checksum of {path}, is damaged; {FIX}") from err
            return {str(k): str(v) for k, v in held.items()}
    return {}


def check_holds(path: str | os.PathLike, **expected: str | None) -> None:
    """Refuse a per-task artifact (SVD cache, fine-tuned encoder, head, split) that says it holds another
    task, model or split than the one asked for: a file copied over another's with its checksum file
    passes every checksum but is the wrong file. ``expected`` maps a key to the value asked for; None skips
    the key. Files written before a key was recorded pass on it. Models compare by their weights' layout:
    open_clip's ``-quickgelu`` variant holds the same weights as its base (the hub fetches record the
    backbone, ``ViT-B-32``; the steps ask with its architecture, ``ViT-B-32-quickgelu``)."""
    held = held_by(path)
    for key, wanted in expected.items():
        if wanted is None or key not in held:
            continue
        same = (_weights_of(held[key]) == _weights_of(wanted)) if key == "model" else held[key] == wanted
        if not same:
            raise ArtifactError(f"{path} holds {key} {held[key]!r}, not {wanted!r}: another file was copied over "
                                f"it with its checksum (the checksum matches its own bytes); {FIX}")


def _weights_of(model: str) -> str:
    return model.removesuffix("-quickgelu")


def save_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save numpy arrays to an uncompressed .npz, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    verify(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ArtifactError(f"{path} is not a readable .npz file ({err}); {FIX}") from err


def load_array(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """One ``.npy`` array (memory-mapped with ``mmap``), after checking its checksum."""
    path = Path(path)
    verify(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ArtifactError(f"{path} is not a readable .npy file ({err}); {FIX}") from err


def _require(path: Path) -> None:
    if not path.is_file():
        raise ArtifactError(f"missing file {path}: run the pipeline step that produces it first")


def is_artifact(path: Path) -> bool:
    """Whether a file under the pipeline's folders is one of its artifacts: not a hidden file (checksums,
    part files), a job's log or a Snakemake benchmark table."""
    return not path.name.startswith(".") and path.suffix not in (".log", ".tsv")


def verify_tree(roots: list[str | os.PathLike], delete: bool = False) -> tuple[int, list[tuple[Path, str]]]:
    """Check every artifact under ``roots`` (:func:`is_artifact`) against its recorded checksum, one
    without a checksum counting as bad; with ``delete``, remove the bad ones (and their checksums) so
    that the next Snakemake run remakes them. Returns the number checked and the bad files with why."""
    checked, bad = 0, []
    for root in map(Path, roots):
        targets = sorted(p for p in root.rglob("*") if p.is_file() and is_artifact(p)) if root.is_dir() else [root]
        for target in targets:
            if not target.is_file():
                continue
            checked += 1
            try:
                verify(target)
            except ArtifactError as err:
                bad.append((target, str(err)))
                if delete:
                    target.unlink()
                    checksum_path(target).unlink(missing_ok=True)
    return checked, bad


def record(paths: list[str | os.PathLike]) -> None:
    """Record the sha256 of files the user vouches for (placed by hand, or copied without their
    checksums), so that the pipeline's readers accept them."""
    for path in map(Path, paths):
        _require(path)
        record_checksum(path, file_sha256(path))


def copy_artifact(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` (checked against its recorded sha256) to ``target`` as every artifact is written."""
    verify(source)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mass.io",
                                     description="Check (or record) the sha256 of the pipeline's artifacts.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check files against the sha256 recorded when they were written")
    check.add_argument("paths", nargs="+", help="folders (searched recursively) or files")
    check.add_argument("--delete", action="store_true",
                       help="delete every file that fails, so that the next snakemake run remakes it")
    vouch = sub.add_parser("record", help="record the sha256 of files you know are good (no checksum yet)")
    vouch.add_argument("paths", nargs="+", help="files")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.paths)
        print(f"recorded the sha256 of {len(args.paths)} file(s)")
        return 0
    checked, bad = verify_tree(args.paths, delete=args.delete)
    for path, why in bad:
        print(f"{'DELETED' if args.delete else 'BAD'} {path}: {why}")
    print(f"{checked} files checked, {len(bad)} {'deleted' if args.delete else 'bad'}")
    return 1 if bad and not args.delete else 0


if __name__ == "__main__":
    sys.exit(main())
