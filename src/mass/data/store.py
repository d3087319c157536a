"""On-disk layout of a prepared dataset split and a fast loader for it.

A task ``<root>/<task>/`` holds ``info.json`` (class names, prompt templates, head name) and,
per split, ``<split>_images.npy`` (N x H x W x 3 uint8, memory-mappable) and
``<split>_labels.npy`` (N int64). Splits are stored once, already at the backbone's
resolution, so later rules only normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from mass.io import ArtifactError, atomic_path, check_holds, read_json, verify, write_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TaskInfo:
    """What a task needs besides pixels: class names and prompts for its own zero-shot head and
    that head's name (a head shared across tasks is built from the catalog, not from here)."""

    name: str
    classnames: list[str]
    templates: list[str]
    head: str = ""
    notes: list[str] = field(default_factory=list)
    # what Table 4 shows: images per split as prepared ({"train", "val", "test"}: train is the part of the
    # source's train split left after the validation carve, whether or not it is stored), and the smallest
    # and the largest width and height of the source images decoded ([[w, h], [w, h]])
    split_sizes: dict[str, int] = field(default_factory=dict)
    source_image_sizes: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.head = self.head or self.name


def save_info(root: str | Path, info: TaskInfo) -> None:
    write_json(Path(root) / info.name / "info.json", asdict(info))


def load_info(root: str | Path, task: str) -> TaskInfo:
    path = Path(root) / task / "info.json"
    info = TaskInfo(**read_json(path))
    if info.name != task:
        raise ArtifactError(f"{path} describes task {info.name!r}, not {task!r}: another task's info.json was copied "
                            "over it with its checksum; delete the task's folder and rerun the same snakemake command "
                            "(it prepares the task again)")
    return info


def split_paths(root: str | Path, task: str, split: str) -> tuple[Path, Path]:
    base = Path(root) / task
    return base / f"{split}_images.npy", base / f"{split}_labels.npy"


def save_split(root: str | Path, task: str, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write labels, then images, each atomically (the preparing rules declare both as outputs); each
    file's checksum records the task and split it holds (:func:`mass.io.check_holds`)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError("images and labels differ in length")
    img_path, lab_path = split_paths(root, task, split)
    for path, array in ((lab_path, labels.astype(np.int64)), (img_path, images)):
        with atomic_path(path, holds={"task": task, "split": split}) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array)


def load_split(root: str | Path, task: str, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    img_path, lab_path = split_paths(root, task, split)
    remake = ("rerun the same snakemake command: the rule preparing the task's splits declares every split file "
              "and remakes the missing ones")
    for path in (img_path, lab_path):
        if not path.is_file():
            raise ArtifactError(f"missing {path}: {remake}")
        verify(path)  # the sha256 recorded when it was written
        check_holds(path, task=task, split=split)  # not another task's or split's file copied over it
    try:
        images = np.load(img_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        labels = np.load(lab_path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ArtifactError(f"{img_path} or {lab_path} is corrupt ({err}); delete both and {remake}") from err
    if len(images) != len(labels):
        raise ArtifactError(f"{img_path} and {lab_path} differ in length; delete both and {remake}")
    return images, labels


class StackedSplits:
    """Several stored splits read as one N x H x W x 3 array without loading them into memory.

    A benchmark's split is the concatenation of its tasks' splits; at 224 px the 20-task test
    set is ~38 GB, so it stays memory-mapped and only the rows asked for (a batch, a routing
    group) are read.
    """

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("StackedSplits needs at least one split")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    def __getitem__(self, index) -> np.ndarray:
        """Rows by slice, integer or index array, as one in-memory uint8 array."""
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        if index.ndim == 0:
            return self[index[None]][0]
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + len(self), index)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        part = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), *self.shape[1:]), dtype=self.parts[0].dtype)
        for p in np.unique(part):
            rows = part == p
            out[rows] = self.parts[p][index[rows] - self.offsets[p]]
        return out


class RowSubset:
    """Rows ``index`` of an image array (memory-mapped or :class:`StackedSplits`), read only when
    a batch of them is asked for, so a routing group of a large test set is never copied whole."""

    def __init__(self, images: np.ndarray | StackedSplits, index: np.ndarray):
        self.images, self.index = images, np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.images.shape[1:])

    def __getitem__(self, key) -> np.ndarray:
        return self.images[self.index[key]]


class ArrayBatches(Dataset):
    """Batches of a (memory-mapped) uint8 image array: one indexing read per batch, not per image."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[indices[0]:indices[-1] + 1]))


def loader_workers(device: str | torch.device = "cpu") -> int:
    """Reader processes a rule may use. Where a GPU computes, the rule's ``threads`` (set with
    :func:`mass.training.set_threads`) minus the one that feeds the device read the next batches
    ahead. On a CPU torch already computes on every one of those threads, and a reader process
    takes a core from it: on the 2-core CPU (2026-11-29, ViT-B/32, 128 images, batch 32, torch on 2
    threads) one reader made the plain forward 5% and MASS's second pass 11% slower than none,
    its many small operations waiting on the core the reader held. So none there."""
    return max(torch.get_num_threads() - 1, 0) if torch.device(device).type == "cuda" else 0


def make_loader(images: np.ndarray, batch_size: int = 256, workers: int | None = None,
                device: str | torch.device = "cpu") -> DataLoader:
    """DataLoader over a stored split in order, in batches of ``batch_size`` uint8 images.

    ``workers`` reader processes (None: :func:`loader_workers` for the ``device`` the batches go
    to) read the next batches of a memory-mapped split from disk while the model runs on the
    current one; no more than there are batches after the first, since a reader has nothing to
    read ahead of one.
    """
    workers = loader_workers(device) if workers is None else workers
    batches = BatchSampler(SequentialSampler(range(len(images))), batch_size, drop_last=False)
    workers = max(min(workers, len(batches) - 1), 0)
    return DataLoader(ArrayBatches(images), sampler=batches, batch_size=None, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda" and torch.cuda.is_available())


def to_model_input(batch: torch.Tensor, size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x size x size on ``device``."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        x = x.clamp_(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def carve_validation(num_train: int, seed: int = 0, max_val: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the ``<X>Val`` convention: a seeded random split of the official
    train split with val size min(floor(0.1 n), max_val), drawn like ``torch.utils.data.random_split``
    with a generator seeded by ``seed`` (the task-vector code's convention)."""
    val_size = min(num_train // 10, max_val)
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[: num_train - val_size], perm[num_train - val_size:]


@dataclass
class SplitData:
    """All tasks' samples of one split, concatenated in benchmark order (images memory-mapped)."""

    images: StackedSplits
    labels: torch.Tensor
    task: torch.Tensor
    task_names: list[str]

    def indices_of(self, t: int) -> np.ndarray:
        return np.flatnonzero(self.task.numpy() == t)
