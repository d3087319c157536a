"""Atomic, safe reading and writing of every artifact the pipeline produces.

Every writer goes through :func:`atomic_path`: the data lands in a temporary file next to the
target and is renamed into place only once complete, so a killed job never leaves a file that
Snakemake or a later rule could take as finished. Readers raise :class:`ArtifactError` with the
file name and the fix instead of a bare traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class ArtifactError(RuntimeError):
    """A required file is missing, truncated or inconsistent; the message says which and how to fix."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


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
    _require(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); delete it and rerun the rule that makes it") from err


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors (no pickle), atomically."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    _require(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{path} is not a readable safetensors file ({err}); "
                            "delete it and rerun the rule that makes it") from err


def save_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save numpy arrays to an uncompressed .npz, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    _require(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as err:
        raise ArtifactError(f"{path} is not a readable .npz file ({err}); "
                            "delete it and rerun the rule that makes it") from err


def _require(path: Path) -> None:
    if not path.is_file():
        raise ArtifactError(f"missing file {path}: run the pipeline step that produces it first")
