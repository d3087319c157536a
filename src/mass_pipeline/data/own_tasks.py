"""Your own tasks: image folders or CSV files declared in the config (key ``tasks``), prepared like the catalog's.

A declared task is read from local files instead of a hub dataset:

* ``folder``: ``<folder>/train/<class>/<image>`` and ``<folder>/test/<class>/<image>``, one subfolder per
  class (torchvision's ``ImageFolder`` convention); the classes are the subfolders' names, sorted, unless
  ``classnames`` gives them (then every subfolder must be one of them).
* ``csv``: a ``train`` and a ``test`` file with the columns ``path`` (relative to the CSV's folder, or
  absolute) and ``label`` (a class name, or an index into ``classnames``).
* ``hub``: a hub dataset repository at a pinned commit (:class:`HubDataset`), its train and test splits'
  parquet files downloaded as the catalog's are (rule ``download_own_task``,
  :func:`mass_pipeline.sources.fetch.fetch_declared_dataset`); the classes are ``classnames``, else the
  ``ClassLabel`` names the ``datasets`` library stored in the parquet metadata.

Its validation split is carved from train with the catalog's ``<X>Val`` convention (seeded, min(n // 10,
5000)) unless ``val_size`` is given; images get the catalog's preprocessing (CLIP's resize and centre
crop, RGB); ``info.json`` records the classes, the prompt templates (``templates``, default
:data:`DEFAULT_TEMPLATES`) and where the files came from. Every problem with a declaration (a missing
folder or file, an empty class, an image that cannot be read, a label outside the classes, a missing
column or split) is one :class:`~mass.io.ArtifactError` naming the task, the file or key and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from mass.data.store import TaskInfo, save_info, save_split
from mass.io import ArtifactError, read_json
from mass_pipeline.data import catalog
from mass_pipeline.data.prepare import (
    MANIFEST,
    carve,
    clip_pixels,
    read_labels,
    row_positions,
    scratch_arrays,
    source_label_names,
    write_images,
)

# The single template of CLIP's zero-shot examples, for tasks that give none (the catalog's tasks have
# their own sets in prompts.json)
DEFAULT_TEMPLATES = ("a photo of a {c}.",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class HubDataset:
    """A declared task's hub dataset (``tasks.<name>.hub``): a repository pinned at a commit, the names of its
    train and test splits, and its image and label columns. No defaults here: the schema holds them."""

    repo: str
    revision: str
    splits: Mapping[str, str]  # "train" / "test" -> the repository's split name
    image_column: str
    label_column: str
    data_dir: str | None = None

    def split_files(self, task: str, files: Sequence[str]) -> dict[str, list[str]]:
        """The parquet files of the train and test splits among the repository's listing, found as the
        catalog finds its sources' (:func:`mass_pipeline.data.catalog.split_files`)."""
        key = f"tasks.{task}.hub"
        return catalog.split_files(
            self.repo, files, {role: self.splits[role] for role in SPLITS}, self.data_dir, f"task {task}",
            {**{role: f"set {key}.splits.{role} to the name of its {role} split (a file <split>-*.parquet or a "
                      "folder <split>/)" for role in SPLITS},
             "data_dir": f"set {key}.data_dir to the folder of the configuration you mean"})

    def check_columns(self, task: str, path: Path) -> None:
        """Refuse a parquet file without the configured image column, or without a label column of class indices,
        naming the task, the file, its columns and the key to set."""
        schema = pq.read_schema(path)
        for key, column, holds in (("image_column", self.image_column, "images"),
                                   ("label_column", self.label_column, "labels")):
            if column not in schema.names:
                raise ArtifactError(f"task {task}: {path} has no column {column!r} (its columns: {schema.names}); "
                                    f"set tasks.{task}.hub.{key} to the column that holds the {holds}")
        kind = schema.field(self.label_column).type
        if not (pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            raise ArtifactError(f"task {task}: column {self.label_column!r} of {path} holds {kind}, not class "
                                f"indices; set tasks.{task}.hub.label_column to a column of integer labels")


@dataclass(frozen=True)
class OwnTask:
    """One declared task (the config's ``tasks.<name>``): where its images are and what its classes are."""

    name: str
    folder: Path | None = None
    csv: Mapping[str, Path] | None = None
    hub: HubDataset | None = None
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    val_size: int | None = None

    @classmethod
    def from_config(cls, name: str, block: Mapping) -> OwnTask:
        """The task from its config block (validated by the schema: exactly one of folder / csv / hub; a hub
        block with the schema's defaults filled in)."""
        folder = block.get("folder")
        files = block.get("csv")
        hub = block.get("hub")
        return cls(name, Path(folder).expanduser() if folder else None,
                   {s: Path(p).expanduser() for s, p in files.items()} if files else None,
                   HubDataset(hub["repo"], hub["revision"], dict(hub["splits"]), hub["image_column"],
                              hub["label_column"], hub.get("data_dir")) if hub else None,
                   tuple(block["classnames"]) if block.get("classnames") else None,
                   tuple(block.get("templates") or DEFAULT_TEMPLATES), block.get("val_size"))

    def key(self) -> str:
        """Where the declaration points, as the config writes it (for error messages)."""
        return f"tasks.{self.name}." + ("folder" if self.folder is not None else "csv" if self.csv else "hub")

    def listing(self, raw: Path | None = None) -> tuple[list[str], dict[str, tuple[list[Path], np.ndarray]]]:
        """The classes and, per split, every image file with its label, in a fixed order; for a hub task, the
        split's parquet files downloaded to ``raw`` and the labels of all their rows."""
        if self.folder is not None:
            return self._folder_listing()
        if self.csv:
            return self._csv_listing()
        if raw is None:
            raise ArtifactError(f"task {self.name}: {self.key()} is read from its downloaded parquet files; give "
                                "the folder download_own_task filled (--raw)")
        return self._hub_listing(Path(raw))

    def _hub_listing(self, raw: Path):
        hub = self.hub
        manifest = read_json(raw / MANIFEST)
        found = (manifest.get("task"), manifest.get("repo"), manifest.get("commit"))
        if found != (self.name, hub.repo, hub.revision):
            raise ArtifactError(f"task {self.name}: {raw / MANIFEST} describes task {found[0]} from {found[1]} at "
                                f"{found[2]}, not {self.key()} ({hub.repo} at {hub.revision}); rerun rule "
                                "download_own_task for it")
        files = {split: [raw / name for name in manifest["splits"][split]] for split in SPLITS}
        for path in (p for split in SPLITS for p in files[split]):
            hub.check_columns(self.name, path)
        classes = list(self.classnames) if self.classnames else source_label_names(files["train"][0],
                                                                                   hub.label_column)
        if classes is None:
            raise ArtifactError(f"task {self.name}: {files['train'][0]} stores no class names for column "
                                f"{hub.label_column!r} (no ClassLabel in its huggingface metadata); give them in "
                                f"tasks.{self.name}.classnames, in label order")
        splits = {}
        for split in SPLITS:
            labels = []
            for path in files[split]:
                try:
                    values = read_labels([path], hub.label_column)
                except ArtifactError as err:
                    raise ArtifactError(f"task {self.name}: {err}; every row needs a label") from None
                outside = values[(values < 0) | (values >= len(classes))]
                if len(outside):
                    raise ArtifactError(f"task {self.name}: {path} has label {outside[0]}, not one of the "
                                        f"{len(classes)} classes {classes[:10]} (label i is the i-th); fix "
                                        f"tasks.{self.name}.classnames or tasks.{self.name}.hub.label_column")
                labels.append(values)
            splits[split] = (files[split], np.concatenate(labels))
        return classes, splits

    def _folder_listing(self):
        root = self.folder
        found = {}
        for split in SPLITS:
            base = root / split
            if not base.is_dir():
                raise ArtifactError(f"task {self.name}: {base} is not a folder; {self.key()} must hold train/ and "
                                    "test/, each with one subfolder of images per class")
            found[split] = {d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                            for d in sorted(base.iterdir()) if d.is_dir()}
        classes = list(self.classnames) if self.classnames else sorted(set(found["train"]) | set(found["test"]))
        if not classes:
            raise ArtifactError(f"task {self.name}: {root / 'train'} has no class subfolders; put each class's images "
                                f"in a folder of its own under {root}/train and {root}/test")
        splits = {}
        for split in SPLITS:
            unknown = sorted(set(found[split]) - set(classes))
            if unknown:
                raise ArtifactError(f"task {self.name}: {root / split} has folders {unknown} that are not among "
                                    f"tasks.{self.name}.classnames {classes}; add them there or remove the folders")
            empty = [c for c in classes if not found[split].get(c)]
            if empty:
                raise ArtifactError(f"task {self.name}: no images for class {empty[0]!r} in {root / split / empty[0]} "
                                    f"(images end in {', '.join(IMAGE_SUFFIXES)}); every class needs train and test "
                                    "images")
            paths = [p for c in classes for p in found[split][c]]
            labels = np.asarray([i for i, c in enumerate(classes) for _ in found[split][c]], dtype=np.int64)
            splits[split] = (paths, labels)
        return classes, splits

    def _csv_listing(self):
        missing = [s for s in SPLITS if s not in (self.csv or {})]
        if missing:
            raise ArtifactError(f"task {self.name}: {self.key()} needs a file for {missing}; give "
                                "{train: <file>, test: <file>}")
        rows = {split: self._read_csv(self.csv[split]) for split in SPLITS}
        names = [label for split in SPLITS for _, label in rows[split]]
        if self.classnames:
            classes = list(self.classnames)
        elif all(label.isdigit() for label in names):
            raise ArtifactError(f"task {self.name}: {self.key()} labels are numbers; give the class names in "
                                f"tasks.{self.name}.classnames (label i is the i-th name)")
        else:
            classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        splits = {}
        for split in SPLITS:
            path = self.csv[split]
            labels = []
            for line, (_, label) in enumerate(rows[split], start=2):
                if label in index:
                    labels.append(index[label])
                elif label.isdigit() and self.classnames and int(label) < len(classes):
                    labels.append(int(label))
                else:
                    raise ArtifactError(f"task {self.name}: {path} line {line} has label {label!r}, not one of the "
                                        f"{len(classes)} classes {classes[:10]}; fix the file or "
                                        f"tasks.{self.name}.classnames")
            images = [p if p.is_absolute() else path.parent / p for p, _ in rows[split]]
            splits[split] = (images, np.asarray(labels, dtype=np.int64))
        empty = [c for i, c in enumerate(classes) if not any((splits[s][1] == i).any() for s in SPLITS)]
        if empty:
            raise ArtifactError(f"task {self.name}: class {empty[0]!r} has no images in {self.key()}; remove it from "
                                f"tasks.{self.name}.classnames or add its images")
        return classes, splits

    def _read_csv(self, path: Path) -> list[tuple[Path, str]]:
        if not path.is_file():
            raise ArtifactError(f"task {self.name}: {path} ({self.key()}) is not a file; give the path of a CSV "
                                "with the columns path,label")
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            if not {"path", "label"} <= set(columns):
                raise ArtifactError(f"task {self.name}: {path} has columns {columns}; it needs the columns path and "
                                    "label (a header line path,label)")
            rows = [(Path(r["path"]), str(r["label"]).strip()) for r in reader]
        if not rows:
            raise ArtifactError(f"task {self.name}: {path} has no rows")
        return rows


def fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the image files' paths and contents: what info.json records of the source."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_image(task: str, path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file as the catalog stores images (CLIP's resize and centre crop, RGB), and its size."""
    try:
        with Image.open(path) as image:
            image.load()
            return clip_pixels(image, size), image.size
    except FileNotFoundError:
        raise ArtifactError(f"task {task}: image {path} does not exist; fix its path in the task's CSV") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ArtifactError(f"task {task}: cannot read image {path} ({err}); replace or remove the file") from None


def prepare_own(task: OwnTask, out: str | Path, image_size: int = 224, splits: Sequence[str] = ("val", "test"),
                max_images: int | None = None, threads: int = 1, raw: str | Path | None = None) -> TaskInfo:
    """Store some of ``task``'s train/val/test splits under ``out/<name>`` (and info.json with test); ``raw``:
    where a hub task's parquet files were downloaded (:func:`mass_pipeline.sources.fetch.fetch_declared_dataset`)."""
    classes, listing = task.listing(raw)
    train_paths, train_labels = listing["train"]
    test_paths, test_labels = listing["test"]
    try:
        train_idx, val_idx = carve(len(train_labels), task.val_size)
    except ArtifactError as err:
        raise ArtifactError(f"task {task.name}: {err}; lower tasks.{task.name}.val_size or add train images") from None
    if len(val_idx) == 0:
        raise ArtifactError(f"task {task.name}: its {len(train_labels)} train images leave no validation images "
                            f"(a tenth of them, rounded down); give tasks.{task.name}.val_size or add train images")
    test_idx = np.arange(len(test_labels))
    if max_images is not None:
        val_idx, test_idx = val_idx[:max_images], test_idx[:max_images]
    parts = {"train": (train_paths, train_labels, train_idx), "val": (train_paths, train_labels, val_idx),
             "test": (test_paths, test_labels, test_idx)}
    sizes: set[tuple[int, int]] = set()
    for split in splits:
        paths, labels, idx = parts[split]
        if task.hub is not None:
            sizes |= _store_parquet_split(task, out, split, paths, labels, idx, image_size, threads)
        else:
            sizes |= _store_file_split(task, out, split, [paths[i] for i in idx], labels[idx], image_size, threads)
        print(f"wrote {Path(out) / task.name / f'{split}_images.npy'} ({len(idx)} images, {image_size} px)",
              file=sys.stderr, flush=True)
    info = TaskInfo(task.name, classes, list(task.templates),
                    split_sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
                    source_image_sizes=[[min(w for w, _ in sizes), min(h for _, h in sizes)],
                                        [max(w for w, _ in sizes), max(h for _, h in sizes)]] if sizes else [])
    if "test" in splits:  # info.json, with the sha256 of every source file (read only by the step that writes it)
        info.notes.append(_source_note(task, train_paths, test_paths, raw))
        if max_images is not None:
            info.notes.append(f"at most {max_images} images of val and test (sources.max_images): not the full dataset")
        save_info(out, info)
    return info


def _store_file_split(task: OwnTask, out: str | Path, split: str, paths: Sequence[Path], labels: np.ndarray,
                      image_size: int, threads: int) -> set[tuple[int, int]]:
    """One split of image files, decoded in ``threads`` threads into a disk-backed array (as the catalog's splits:
    a declared split may be larger than memory); the source images' sizes."""
    with scratch_arrays(Path(out) / task.name, {split: len(paths)}, image_size) as arrays:
        array = arrays[split]

        def store(row: int, path: Path) -> tuple[int, int]:
            array[row], size = read_image(task.name, path, image_size)
            return size

        with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
            sizes = set(pool.map(store, range(len(paths)), paths))
        save_split(out, task.name, split, array, labels)
    return sizes


def _store_parquet_split(task: OwnTask, out: str | Path, split: str, files: Sequence[Path], labels: np.ndarray,
                         idx: np.ndarray, image_size: int, threads: int) -> set[tuple[int, int]]:
    """The rows ``idx`` of a split's parquet files, decoded as the catalog's are
    (:func:`mass_pipeline.data.prepare.write_images`); the source images' sizes."""
    with scratch_arrays(Path(out) / task.name, {split: len(idx)}, image_size) as arrays:
        array = arrays[split]
        sizes = write_images(files, task.hub.image_column, [(array, row_positions(idx, len(labels)))], image_size,
                             None, "torchvision", threads, desc=f"{task.name} {split}")
        save_split(out, task.name, split, array, labels[idx])
    return sizes


def _source_note(task: OwnTask, train: Sequence[Path], test: Sequence[Path], raw: str | Path | None) -> str:
    """Where the task's images came from, with a sha256 over the files read, for info.json (a hub dataset's files
    named as in the repository: relative to ``raw``)."""
    if task.hub is None:
        where = task.folder if task.folder is not None else ", ".join(f"{s}: {p}" for s, p in task.csv.items())
        return (f"source: your files ({task.key()}: {where}); sha256 of the train and test images "
                f"{fingerprint([*train, *test])}")
    hub = task.hub
    files = {split: [p.relative_to(raw).as_posix() for p in paths]
             for split, paths in (("train", train), ("test", test))}
    return (f"source: hub dataset {hub.repo} at commit {hub.revision} ({task.key()}: splits train "
            f"{hub.splits['train']!r} and test {hub.splits['test']!r}, columns {hub.image_column!r} and "
            f"{hub.label_column!r}), files {files}; sha256 of the files {fingerprint([*train, *test])}")
