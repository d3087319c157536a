"""Turn a task's downloaded hub parquet files into the pipeline's stored train/val/test splits.

:func:`prepare` (the ``prepare_dataset`` and ``prepare_train_split`` steps) reads
``<raw>/manifest.json`` (written by :func:`mass_pipeline.sources.fetch.fetch_dataset`),
decodes every image and applies CLIP's evaluation preprocessing up to the pixel level (resize
the shortest side to ``image-size`` with bicubic filtering, centre crop, RGB), exactly as
open_clip's eval transform does it, so later rules only normalise. Images are stored once per
split with :func:`mass.data.store.save_split`; ``info.json`` (class names, templates, head,
provenance and deviations) is written last. Progress goes to stderr (the rule's log): a tqdm bar
of decoded images per split (count, rate, ETA) and one line per file written.

Splits: ``val`` is carved from the official train split with the ``<X>Val`` convention
(:func:`mass.data.store.carve_validation`; EuroSAT: a fixed 2700), ``train`` is the rest and
``test`` is the official test split. EMNIST images are re-oriented to what the checkpoint
expects (``--emnist-orientation``). STL10 and CIFAR10 keep their own labels: the benchmark code maps
them onto their shared head where both are present (:func:`mass_pipeline.data.catalog.benchmark_head`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf
from tqdm import tqdm

from mass.data.store import TaskInfo, carve_validation, save_info, save_split
from mass.io import ArtifactError, no_space_error, read_json
from mass_pipeline.data import catalog
from mass_pipeline.editions import ClassSpace, Edition, load_edition

MANIFEST = "manifest.json"


SPLITS = ("train", "val", "test")


def orient(image: Image.Image, source: str | None, wanted: str) -> Image.Image:
    """Re-orient an EMNIST image from the source's orientation to the checkpoint's.

    The two orientations differ by a transpose, which the MASS code writes as rotate -90
    degrees then flip horizontally; a transpose is its own inverse, so any mismatch is fixed
    by the same operation.
    """
    if source is None or source == wanted:
        return image
    return image.rotate(-90).transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def check_orientation(task: str, images: np.ndarray, labels: np.ndarray, wanted: str, max_images: int = 2000) -> None:
    """Fail unless the stored digit-1 images stand upright in the ``mnist`` orientation (lie flat in
    ``torchvision``'s): a source whose orientation differs from the catalog's would otherwise be
    stored silently transposed, and EMNIST would then be routed to MNIST (paper, supp. 8.1)."""
    ones = np.flatnonzero(labels == 1)[:max_images]
    if len(ones) == 0:
        raise ArtifactError(f"{task}: no images of the digit 1 to check the orientation on")
    mean = images[np.sort(ones), ..., 0].astype(np.float64).mean(axis=0)
    spread = [_spread(mean.sum(axis=axis)) for axis in (1, 0)]  # along rows (height), along columns (width)
    upright = spread[0] > spread[1]
    if upright != (wanted == "mnist"):
        raise ArtifactError(
            f"{task}: after re-orienting to {wanted!r}, the mean digit 1 is {'taller' if upright else 'wider'} than "
            f"it is {'wide' if upright else 'tall'}, so the source's images are not in the orientation the catalog "
            "says. Set datasets.EMNIST.source_orientation in config.yaml to the other value and rerun.")


def _spread(profile: np.ndarray) -> float:
    """Standard deviation of positions weighted by ``profile`` (how far the ink extends)."""
    weights = profile / profile.sum()
    positions = np.arange(len(profile))
    centre = (weights * positions).sum()
    return float(np.sqrt((weights * (positions - centre) ** 2).sum()))


def clip_pixels(image: Image.Image, size: int) -> np.ndarray:
    """open_clip's eval preprocessing without normalisation: shortest side -> ``size`` (bicubic),
    centre crop ``size`` x ``size``, convert to RGB (in that order, like open_clip)."""
    image = tvf.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    image = tvf.center_crop(image, [size, size])
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode(cell: Any) -> Image.Image:
    """A parquet image cell as the hub stores it ({"bytes", "path"} struct, or raw bytes)."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        where = cell.get("path") if isinstance(cell, dict) else None
        raise ArtifactError(f"image cell without embedded bytes (path {where!r}); only parquet files with embedded "
                            "images are supported")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def read_labels(files: Sequence[Path], column: str) -> np.ndarray:
    """The label column of a split (all shards, in order) as int64."""
    parts = []
    for path in files:
        table = pq.read_table(path, columns=[_require_column(path, column, "label_column")])
        values = table.column(0)
        if values.null_count:
            raise ArtifactError(f"{path} has {values.null_count} missing labels in column {column!r}")
        parts.append(values.to_numpy().astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def source_label_names(path: Path, column: str) -> list[str] | None:
    """Class names the ``datasets`` library stored in the parquet schema metadata, if any."""
    meta = pq.read_schema(path).metadata or {}
    try:
        features = json.loads(meta[b"huggingface"])["info"]["features"]
        names = features[column]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(n) for n in names]


def _require_column(path: Path, column: str, field: str) -> str:
    names = pq.read_schema(path).names
    if column not in names:
        raise ArtifactError(f"{path} has no column {column!r} (columns: {names}); set {field} of this task's "
                            "source in mass/data/catalog.py")
    return column


def iter_images(files: Sequence[Path], column: str, batch_rows: int = 256) -> Iterator[list[Any]]:
    """Image cells of a split in row order, in batches (memory stays bounded on big splits)."""
    for path in files:
        _require_column(path, column, "image_column")
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[column]):
            yield batch.column(0).to_pylist()


def carve(num_train: int, val_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the official train split. The ``<X>Val`` convention unless a fixed
    ``val_size`` is given, which is drawn with the same seeded permutation."""
    if val_size is None:
        return carve_validation(num_train, seed=catalog.VAL_SEED, max_val=catalog.VAL_MAX)
    if not 0 < val_size < num_train:
        raise ArtifactError(f"cannot carve {val_size} validation images out of {num_train}")
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(catalog.VAL_SEED)).numpy()
    return perm[: num_train - val_size], perm[num_train - val_size:]


def write_images(files: Sequence[Path], column: str, destinations: Sequence[tuple[np.ndarray, np.ndarray]],
                 size: int, source_orientation: str | None, orientation: str, threads: int,
                 desc: str = "images") -> set[tuple[int, int]]:
    """Decode a split row by row into its destination arrays; return the (width, height) of the
    source images decoded.

    ``destinations`` pairs each output array with ``position`` (one int per source row: its index
    in that array, -1 if the row goes elsewhere), so a carved split is written in one pass; rows
    that no destination wants (train rows when only val is prepared) are not decoded.
    """
    seen: set[tuple[int, int]] = set()

    def convert(cell: Any) -> np.ndarray:
        image = decode(cell)
        seen.add(image.size)
        return clip_pixels(orient(image, source_orientation, orientation), size)

    wanted = np.any([position >= 0 for _, position in destinations], axis=0)  # rows stored somewhere
    row = 0
    tty = sys.stderr.isatty()
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool, \
            tqdm(total=int(wanted.sum()), unit="img", desc=desc, file=sys.stderr, disable=False,
                 mininterval=0.5 if tty else 30.0, ascii=not tty) as bar:
        for cells in iter_images(files, column):
            rows = [row + i for i in range(len(cells)) if row + i < len(wanted) and wanted[row + i]]
            for r, pixels in zip(rows, pool.map(convert, [cells[r - row] for r in rows]), strict=True):
                for array, position in destinations:
                    if position[r] >= 0:
                        array[position[r]] = pixels
            bar.update(len(rows))
            row += len(cells)
    expected = len(destinations[0][1])
    if row != expected:
        raise ArtifactError(f"{files[0]}: read {row} images but {expected} labels; the parquet files are inconsistent")
    return seen


def row_positions(indices: np.ndarray, total: int) -> np.ndarray:
    """Where each of ``total`` source rows goes in the array of ``indices`` (-1: not there), for
    :func:`write_images`."""
    position = np.full(total, -1, dtype=np.int64)
    position[indices] = np.arange(len(indices))
    return position


@contextmanager
def scratch_arrays(folder: Path, counts: Mapping[str, int], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Disk-backed uint8 arrays, one per split named in ``counts`` with its image count (PCAM's train split
    alone is ~39 GB at 224 px), for the catalog's and the declared tasks' preparation; removed on leaving,
    whether the splits were stored from them or something failed.

    Their disk space is reserved at once (``posix_fallocate``): a sparse memory map on a disk that
    fills up would kill the process with SIGBUS part-way, with no message."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f".{name}_images.scratch.npy" for name in counts}
    arrays: dict[str, np.ndarray] = {}
    try:
        for name, count in counts.items():
            arrays[name] = _reserved_memmap(paths[name], count, size)
        yield arrays
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)


def _reserved_memmap(path: Path, count: int, size: int) -> np.ndarray:
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
        with open(path, "r+b") as fh:
            try:
                os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
            except OSError as err:  # a filesystem that cannot reserve space (EOPNOTSUPP) is written as is
                if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
    except OSError as err:
        path.unlink(missing_ok=True)
        raise no_space_error(err, path, count * size * size * 3) from None
    return array


def check_label_names(task: str, classnames: Sequence, source_names: Sequence[str] | None,
                      aliases: dict[str, str] | None = None) -> tuple[np.ndarray | None, list[str]]:
    """The source-to-published label map of ``task`` (None: keep the labels) and notes to keep
    (:func:`mass_pipeline.data.catalog.label_permutation`); no source names at all: nothing to check."""
    if source_names is None:
        return None, ["the source stores no class names; its labels are taken to be in the published order"]
    perm, notes = catalog.label_permutation(task, classnames, source_names, aliases)
    return (None if perm is None else np.asarray(perm, dtype=np.int64)), notes


def edition_classes(task: str, found: Edition, source_names: Sequence[str] | None,
                    ) -> tuple[list[str], np.ndarray | None, list[str]]:
    """Class names, source-to-class label map (None: the same) and notes of ``task`` in an edition whose
    heads follow the sources (:attr:`mass_pipeline.editions.Edition.class_spaces`)."""
    edition = found.name
    space = (found.class_spaces or {}).get(task, ClassSpace())
    names = list(space.classnames) if space.classnames is not None else source_names
    if names is None:
        raise ArtifactError(f"{task}: the source stores no class names and the {edition} edition gives none "
                            "(mass_pipeline/data/editions); add the task's classnames to the edition's class_spaces")
    notes = [f"classes of the {edition} edition's head: "
             + ("the source's names in the source's order" if space == ClassSpace() else
                "as the edition overrides them" + (" (source labels remapped)" if space.label_map else ""))
             + f" ({found.records[found.class_spaces_record].cite if found.class_spaces_record else ''})"]
    perm = None if space.label_map is None else np.asarray(space.label_map, dtype=np.int64)
    if perm is not None and (perm.min() < 0 or perm.max() >= len(names)):
        raise ArtifactError(f"{task}: the {edition} edition maps labels onto classes 0..{perm.max()}, but gives "
                            f"{len(names)} class names; fix its class_spaces")
    return list(names), perm, notes


def prepare(task: str, raw: str | os.PathLike, out: str | os.PathLike, image_size: int = 224,
            emnist_orientation: str = "torchvision", threads: int = 1,
            source_orientation: str | None = None, splits: Sequence[str] = SPLITS,
            max_images: int | None = None, edition: str | None = None) -> TaskInfo:
    """Prepare some of one task's train/val/test splits under ``out/<task>``, and info.json
    whenever ``test`` is among them.

    Only tasks fine-tuned here read ``train`` (at 224 px the 20 tasks' train splits take ~160 GB),
    so the pipeline prepares val and test for every task and train in a separate step for those
    alone. ``source_orientation`` overrides the catalog's orientation of the source's EMNIST images.
    ``max_images`` keeps only the first that many images of val and test (after the validation carve);
    train stays whole, so EMNIST's orientation check, run on the first split stored, sees its digit-1s.
    ``edition``: an edition whose heads follow the sources' own classes (the final one) stores those
    (:func:`edition_classes`); otherwise the labels are mapped onto the first edition's published heads.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {list(splits)}")
    raw, out = Path(raw), Path(out)
    manifest = read_json(raw / MANIFEST)
    if manifest.get("task") != task:
        raise ArtifactError(f"{raw / MANIFEST} describes task {manifest.get('task')!r}, not {task!r}; "
                            "rerun the download rule for this task")
    src = catalog.source(task, manifest.get("repo"))
    if src.orientation is not None and source_orientation is not None:
        src = replace(src, orientation=source_orientation)
    files = {role: [raw / name for name in names] for role, names in manifest["splits"].items()}
    classnames, templates = catalog.task_prompts(task)
    notes = [f"source: hub dataset {manifest['repo']} at commit {manifest['commit']}", *src.notes]
    source_names = source_label_names(files["train"][0], src.label_column) or (
        list(src.source_classnames) if src.source_classnames else None)
    found = load_edition(edition) if edition is not None else None
    if found is not None and found.class_spaces is not None:
        classnames, perm, label_notes = edition_classes(task, found, source_names)
        head = None
    else:
        perm, label_notes = check_label_names(task, classnames, source_names, catalog.label_aliases(task))
        head = catalog.shared_head(task)
    notes += label_notes
    if src.orientation is not None:
        notes.append(f"{task} images stored in {emnist_orientation!r} orientation (source: {src.orientation!r})")

    labels = {role: read_labels(files[role], src.label_column) for role in ("train", "test")}
    source_classes = len(perm) if perm is not None else len(classnames)
    for role, values in labels.items():
        if len(values) and (values.min() < 0 or values.max() >= source_classes):
            raise ArtifactError(f"{task} {role} labels span {values.min()}..{values.max()} but there are "
                                f"{source_classes} classes; the source does not match the catalog")
    if perm is not None:  # the source's label i is the head's class perm[i]
        labels = {role: perm[values] for role, values in labels.items()}
    if head is not None:
        notes.append(f"in a benchmark with {', '.join(t for t in head.label_maps if t != task)}, labels are mapped "
                     f"onto the shared head {head.name} ({len(head.classnames)} classes)")

    folder = out / task
    train_idx, val_idx = carve(len(labels["train"]), src.val_size)
    test_idx = np.arange(len(labels["test"]))
    if max_images is not None:
        val_idx, test_idx = val_idx[:max_images], test_idx[:max_images]
        notes.append(f"at most {max_images} images of val and test (sources.max_images): not the full dataset")
    # (source files, [(stored split, row indices)], labels): train and val come from one pass; the
    # EMNIST orientation is checked on the first split decoded, before anything is stored
    plan = [(files["test"], [("test", test_idx)], labels["test"]),
            (files["train"], [("train", train_idx), ("val", val_idx)], labels["train"])]
    plan = [(f, [(n, idx) for n, idx in parts if n in splits], y) for f, parts, y in plan]
    checked = src.orientation is None
    image_sizes: set[tuple[int, int]] = set()
    for split_files, parts, split_labels in (p for p in plan if p[1]):
        with scratch_arrays(folder, {name: len(idx) for name, idx in parts}, image_size) as arrays:
            image_sizes |= write_images(split_files, src.image_column,
                         [(arrays[name], row_positions(idx, len(split_labels))) for name, idx in parts],
                         image_size, src.orientation, emnist_orientation, threads,
                         desc=f"{task} {'+'.join(name for name, _ in parts)}")
            if not checked:
                name, idx = parts[0]
                check_orientation(task, arrays[name], split_labels[idx], emnist_orientation)
                checked = True
            for name, idx in parts:
                try:
                    save_split(out, task, name, arrays[name], split_labels[idx])
                except OSError as err:
                    raise no_space_error(err, folder / f"{name}_images.npy", arrays[name].nbytes) from None
                print(f"wrote {folder / f'{name}_images.npy'} and {name}_labels.npy ({len(idx)} images, "
                      f"{image_size} px)", file=sys.stderr, flush=True)

    sizes = {"val": len(val_idx), "test": len(test_idx)}
    if src.hub_rows is not None and (len(labels["train"]), len(labels["test"])) != src.hub_rows:
        notes.append(f"the source has train {len(labels['train'])} / test {len(labels['test'])} rows; the catalog "
                     f"recorded {src.hub_rows[0]} / {src.hub_rows[1]} for {src.repo} (expected val {src.expected_val})")
    published = {"val": src.published_val, "test": src.published_test}
    for split, count in sizes.items():
        if published[split] is not None and count != published[split]:
            notes.append(f"{split} has {count} images; the published checkpoints used {published[split]}")
    info = TaskInfo(task, classnames, templates, notes=notes,
                    split_sizes={"train": len(train_idx), **sizes},
                    source_image_sizes=[[min(w for w, _ in image_sizes), min(h for _, h in image_sizes)],
                                        [max(w for w, _ in image_sizes), max(h for _, h in image_sizes)]]
                    if image_sizes else [])
    if "test" in splits:
        save_info(out, info)
    return info
