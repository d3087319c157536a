"""Parquet files laid out the way the hub stores them (image struct {"bytes", "path"}, ClassLabel names in
the ``datasets`` metadata) and the raw folder the download step leaves, for the source tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from support.hub import COMMIT, HubServer

from mass.io import write_json
from mass_pipeline.data import catalog

DIGITS = [str(i) for i in range(10)]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def parquet_bytes(images: np.ndarray, labels: np.ndarray, names: list[str] | None = None, image_col: str = "image",
                  label_col: str = "label", struct: bool = True) -> bytes:
    """A parquet file laid out like the hub's: image struct (or raw bytes) column + int label column."""
    cells = [png(img) for img in images]
    column = (pa.array([{"bytes": c, "path": f"{i}.png"} for i, c in enumerate(cells)],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
              if struct else pa.array(cells, type=pa.binary()))
    table = pa.table({image_col: column, label_col: pa.array(labels, type=pa.int64())})
    if names is not None:
        features = {image_col: {"_type": "Image"}, label_col: {"names": names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_raw(raw: Path, task: str, train: bytes, test: bytes) -> None:
    """What ``fetch dataset`` leaves behind: parquet files plus manifest.json."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "train-00000-of-00001.parquet").write_bytes(train)
    (raw / "test-00000-of-00001.parquet").write_bytes(test)
    manifest = {"task": task, "repo": catalog.SOURCES[task].repo, "revision": "main", "commit": "c" * 40,
                "splits": {"train": ["train-00000-of-00001.parquet"], "test": ["test-00000-of-00001.parquet"]}}
    write_json(raw / "manifest.json", manifest)  # as the download step writes it, with its checksum


def gray(n: int, seed: int, size: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def mnist_on_hub(hub: HubServer, seed: int, commit: str = COMMIT) -> tuple[bytes, bytes]:  # noqa: F811
    """Tiny MNIST train/test parquet files on the test hub at ``commit`` (which main then points to)."""
    files = (parquet_bytes(gray(20, seed), np.arange(20) % 10, DIGITS),
             parquet_bytes(gray(10, seed + 1), np.arange(10)))
    for split, data in zip(("train", "test"), files, strict=True):
        hub.add("datasets/ylecun/mnist", f"mnist/{split}-00000-of-00001.parquet", data, commit=commit)
    return files
