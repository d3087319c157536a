"""The paper's 20 image-classification tasks, and EMNIST letters: where each one comes from and how it is split.

Dataset facts live here, next to the code that relies on them, rather than in config.yaml:
which hub parquet copy is used, what its splits and columns are called, how the validation
split is made, and the quirks a faithful reproduction must handle. Only a source's hub
repository and revision are meant to be overridden from config.

Revisions. Every source's revision defaults to ``None``: the first download resolves the
repository's ``ref`` (its default branch, or the parquet-conversion branch where the hub only
converted the data) to a commit and writes it to the lock file (see :mod:`mass_pipeline.sources.download`);
every later run fetches exactly that commit. To pin a revision by hand, set
``datasets.<task>.revision`` in config.yaml to a commit sha.

Splits. ``train``/``test`` name the source's official train and test splits (Food101's test
split is called ``validation`` on the hub). Validation follows the ``<X>Val`` convention of
the task-vector code: a seeded (seed 0) random split of the official train split of size
min(floor(n / 10), 5000); EuroSAT instead has a fixed 2700-image validation split.

Class names and prompt templates (the OpenAI CLIP sets as extended by the task-vector code
base, ``{c}`` = class) are package data in ``prompts.json``, in the label order of the published
heads and checkpoints (torchvision's class order where the task-vector code takes torchvision's
classes). A hub copy may order or spell its labels differently (``ethz/food101`` puts
``cheesecake`` before ``cheese_plate``; ``clip-benchmark/wds_fer2013`` sorts FER2013's emotions
alphabetically; ``tanganke/kmnist`` names KMNIST's classes in hiragana): preparation maps the
source's labels onto the published order by name (:func:`label_permutation`), using the class
names the source stores (parquet ``ClassLabel`` metadata, else ``source_classnames`` here) and the
``aliases`` of ``prompts.json``.

Beyond the paper. ``EMNISTLetters`` (``tanganke/emnist_letters``) is in no benchmark of the paper: it is
the EMNIST task of FusionBench's 20-task set, whose ``emnist_letters`` encoders are letters, not the
paper's digits, so running FusionBench's own set needs it (docs/data.md, "FusionBench's fine-tuned
encoders"). Its class names and template are FusionBench's, and its images are stored as the hub copy
holds them, the orientation FusionBench fine-tuned on (no re-orientation, unlike EMNIST).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

from mass.io import ArtifactError

BENCHMARKS: dict[int, tuple[str, ...]] = {
    8: ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SVHN", "SUN397"),
}
BENCHMARKS[14] = BENCHMARKS[8] + ("STL10", "OxfordIIITPet", "Flowers102", "CIFAR100", "PCAM", "FER2013")
BENCHMARKS[20] = BENCHMARKS[14] + ("CIFAR10", "Food101", "FashionMNIST", "RenderedSST2", "EMNIST", "KMNIST")
# tasks the catalog knows beyond the paper's 20 (see "Beyond the paper" above)
EXTRA_TASKS = ("EMNISTLetters",)
TASKS = BENCHMARKS[20] + EXTRA_TASKS

VAL_SEED = 0
VAL_MAX = 5000
# EMNIST orientations: "torchvision" = as torchvision's EMNIST (and the hub parquet) delivers the
# images, transposed relative to MNIST; "mnist" = transposed back (rotate -90, then flip
# horizontally), as the MASS authors did before re-fine-tuning EMNIST (paper, supp. 8.1).
EMNIST_ORIENTATIONS = ("torchvision", "mnist")


@dataclass(frozen=True)
class DatasetSource:
    """One task's hub parquet source and the facts needed to turn it into train/val/test."""

    task: str
    repo: str
    published_val: int | None  # val / test sizes behind the published checkpoints (reference table); None: unpublished
    published_test: int
    ref: str = "main"  # branch resolved when no revision is pinned
    revision: str | None = None  # None: resolve ``ref`` on first download and pin it in the lock file
    data_dir: str | None = None  # repository folder of the parquet files when several configs share split names
    train_split: str = "train"
    test_split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    val_size: int | None = None  # fixed validation size instead of min(n // 10, VAL_MAX)
    head: str = ""  # name of a head shared with other tasks ("" = own head)
    orientation: str | None = None  # EMNIST: orientation of the source's images
    notes: tuple[str, ...] = ()
    # the source's label names in its label order, where its parquet files carry no ClassLabel metadata
    source_classnames: tuple[str, ...] | None = None
    hub_rows: tuple[int, int] | None = None  # (train, test) rows of the hub copy, where read from its card

    @property
    def expected_val(self) -> int | None:
        """Validation size the hub copy gives (``<X>Val`` carve of its train split, or the fixed size)."""
        if self.val_size is not None:
            return self.val_size
        return None if self.hub_rows is None else min(self.hub_rows[0] // 10, VAL_MAX)

    def split_files(self, files: Iterable[str]) -> dict[str, list[str]]:
        """Parquet files of the train and test splits among a repository listing (:func:`split_files`)."""
        fix = "fix the source in mass_pipeline/data/catalog.py"
        return split_files(self.repo, files, {"train": self.train_split, "test": self.test_split}, self.data_dir,
                           f"task {self.task}", {"train": fix, "test": fix,
                                                 "data_dir": f"set data_dir for {self.task} in "
                                                             "mass_pipeline/data/catalog.py"})


def split_files(repo: str, files: Iterable[str], splits: Mapping[str, str], data_dir: str | None, subject: str,
                fixes: Mapping[str, str]) -> dict[str, list[str]]:
    """Parquet files of each split (role -> the repository's split name) among a repository listing, in shard
    order; the catalog's sources and the declared hub tasks find them alike.

    A file belongs to split S if it is named ``S-*.parquet`` / ``S.parquet`` (uploads made with ``datasets``)
    or lies in a folder named S (the hub's parquet-conversion branch), under ``data_dir`` when given. An error
    names ``subject`` (the task) and says what to change: ``fixes`` per role, and under ``data_dir`` for a split
    found in several folders.
    """
    parquet = [f for f in files if f.endswith(".parquet")
               and (data_dir is None or f.startswith(data_dir.rstrip("/") + "/"))]
    out = {}
    for role, split in splits.items():
        chosen = sorted(f for f in parquet if _in_split(f, split))
        if not chosen:
            raise ArtifactError(f"{subject}: {repo} has no parquet files for split {split!r} (parquet files: "
                                f"{sorted(parquet)[:8]}); {fixes[role]}")
        folders = sorted({posixpath.dirname(f) for f in chosen})
        if len(folders) > 1:
            raise ArtifactError(f"{subject}: split {split!r} of {repo} is ambiguous across folders {folders}; "
                                f"{fixes['data_dir']}")
        out[role] = chosen
    return out


def _in_split(path: str, split: str) -> bool:
    name = posixpath.basename(path)
    return (name.startswith(f"{split}-") or name == f"{split}.parquet"
            or posixpath.basename(posixpath.dirname(path)) == split)


_DTD_NOTE = ("DTD: in the community's prepared folders the published checkpoints were fine-tuned on, the test images "
             "are also in the train folder, which is why the published fine-tuned DTD test accuracy is about 98%. "
             "The hub copy used here keeps train (3760) and test (1880) disjoint, so its val is 376 images (published: "
             "564), and a DTD model fine-tuned here never sees the test images; evaluation of the published "
             "checkpoint is as published, not 'fixed'.")
_SUN397_NOTE = ("SUN397: the hub copy has train 19850 / test 19850 (one of SUN397's ten 50-per-class partitions), so "
                "its val is 1985 images and train 17865; the published checkpoints used val 3970 from a larger train "
                "split.")

SOURCES: dict[str, DatasetSource] = {s.task: s for s in (
    DatasetSource("Cars", "tanganke/stanford_cars", 814, 8041, hub_rows=(8144, 8041),
                  notes=("Stanford Cars' original URL is dead; the hub parquet copy is used.",)),
    DatasetSource("DTD", "tanganke/dtd", 564, 1880, hub_rows=(3760, 1880), notes=(_DTD_NOTE,)),
    DatasetSource("EuroSAT", "tanganke/eurosat", 2700, 2700, val_size=2700,
                  notes=("EuroSAT: the published split is 21600/2700/2700 with a separate validation folder; the "
                         "hub copy has train (21600) and test (2700) only, so val is a seeded 2700-image carve of "
                         "train.",)),
    DatasetSource("GTSRB", "tanganke/gtsrb", 2664, 12630, hub_rows=(26640, 12630)),
    DatasetSource("MNIST", "ylecun/mnist", 5000, 10000, hub_rows=(60000, 10000)),
    DatasetSource("RESISC45", "tanganke/resisc45", 1890, 6300, hub_rows=(18900, 6300)),
    DatasetSource("SVHN", "ufldl-stanford/svhn", 5000, 26032, data_dir="cropped_digits", hub_rows=(73257, 26032)),
    DatasetSource("SUN397", "tanganke/sun397", 3970, 19850, hub_rows=(19850, 19850), notes=(_SUN397_NOTE,)),
    DatasetSource("STL10", "tanganke/stl10", 500, 8000, head="CIFAR10_STL10"),
    DatasetSource("OxfordIIITPet", "timm/oxford-iiit-pet", 368, 3669, hub_rows=(3680, 3669)),
    DatasetSource("Flowers102", "dpdl-benchmark/oxford_flowers102", 102, 6149),
    DatasetSource("CIFAR100", "tanganke/cifar100", 5000, 10000),
    DatasetSource("PCAM", "1aurent/PatchCamelyon", 5000, 32768, hub_rows=(262144, 32768),
                  notes=("PCAM: the hub copy's label is a boolean (True = metastatic tissue = class 1) with no "
                         "class names; its validation split ('valid', 32768) is not used.",)),
    DatasetSource("FER2013", "clip-benchmark/wds_fer2013", 2870, 7178, ref="refs/convert/parquet",
                  image_column="jpg", label_column="cls",
                  source_classnames=("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"),
                  notes=("FER2013: the hub copy is a webdataset; its parquet conversion (refs/convert/parquet) "
                         "is used.",)),
    DatasetSource("CIFAR10", "tanganke/cifar10", 5000, 10000, head="CIFAR10_STL10", hub_rows=(50000, 10000)),
    DatasetSource("Food101", "ethz/food101", 5000, 25250, test_split="validation", hub_rows=(75750, 25250)),
    DatasetSource("FashionMNIST", "zalando-datasets/fashion_mnist", 5000, 10000, hub_rows=(60000, 10000)),
    DatasetSource("RenderedSST2", "nateraw/rendered-sst2", 692, 1821, hub_rows=(6920, 1821)),
    DatasetSource("EMNIST", "ernestchu/emnist-digits", 5000, 40000, orientation="torchvision",
                  notes=("EMNIST: the 'digits' split (240000/40000) of the published checkpoints. The hub copy is "
                         "taken to keep the raw EMNIST (= torchvision) orientation, transposed relative to MNIST; "
                         "prepare verifies that on the digit-1 images before storing anything.",)),
    DatasetSource("KMNIST", "tanganke/kmnist", 5000, 10000, hub_rows=(60000, 10000)),
    DatasetSource("EMNISTLetters", "tanganke/emnist_letters", None, 20800, hub_rows=(124800, 20800),
                  notes=("EMNISTLetters: FusionBench's emnist_letters (26 classes A-Z), not the paper's EMNIST digits. "
                         "FusionBench's dataset configs load the hub copy's train and test splits; it publishes no "
                         "validation split, so val is the <X>Val carve of train.",)),
)}
assert set(SOURCES) == set(TASKS)


def source(task: str, repo: str | None = None, revision: str | None = None) -> DatasetSource:
    """The catalog's source of ``task``, with the config's repository/revision overrides applied."""
    if task not in SOURCES:
        raise KeyError(f"unknown task {task!r}; the catalog knows {', '.join(TASKS)}")
    found = SOURCES[task]
    return replace(found, repo=repo or found.repo, revision=revision or found.revision)


@dataclass(frozen=True)
class SharedHead:
    """A head several tasks share (MASS merges STL10 and CIFAR10: 9 common classes + frog + monkey).

    It is used only in a benchmark that holds all of its tasks (the 20-task one); elsewhere, and
    for fine-tuning and fine-tuned accuracy, each task keeps its own head. Prepared splits store
    each task's own labels; ``label_maps[task][i]`` is the merged-head index of its label ``i``.
    """

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    label_maps: dict[str, tuple[int, ...]]


@lru_cache(maxsize=1)
def load_prompts() -> dict:
    """The parsed ``prompts.json`` package data."""
    return json.loads((resources.files("mass_pipeline.data") / "prompts.json").read_text(encoding="utf-8"))


def task_prompts(task: str) -> tuple[list[str | list[str]], list[str]]:
    """A task's own class names (label order of the published head) and prompt templates.

    A class given as a list of synonyms (FER2013) stays a list: see :func:`mass.heads.class_text`.
    """
    entry = load_prompts()["tasks"][task]
    return [c if isinstance(c, str) else list(c) for c in entry["classnames"]], list(entry["templates"])


def label_aliases(task: str) -> dict[str, str]:
    """A source's spelling of a class -> the class name of ``prompts.json`` (e.g. KMNIST's hiragana)."""
    return dict(load_prompts()["tasks"][task].get("aliases", {}))


def normalise_name(name: str) -> str:
    """A class name compared by name: lower case, runs of spaces/underscores/hyphens/slashes as one space."""
    return re.sub(r"[\s_\-/]+", " ", name).strip().lower()


def label_permutation(task: str, classnames: Sequence[str | Sequence[str]], source_names: Sequence[str],
                      aliases: Mapping[str, str] | None = None) -> tuple[list[int] | None, list[str]]:
    """Map a source's labels onto the published label order by name.

    Returns ``(perm, notes)``: ``perm[i]`` is the published index of the source's label ``i`` (None
    when the labels are used as they are) and notes to keep. A class given as synonyms matches any of
    them; ``aliases`` maps source spellings to ours. When every source name matches, the labels are
    remapped (a permutation). When some names match and others are spelled differently, the matched
    ones must already sit at their published index (then the labels are kept and the differences
    noted); otherwise nothing can be mapped safely and this is an error.
    """
    if len(source_names) != len(classnames):
        raise ArtifactError(f"{task}: the source has {len(source_names)} classes, the catalog {len(classnames)}; "
                            "the source or mass_pipeline/data/prompts.json is wrong")
    ours: dict[str, int] = {}
    for index, name in enumerate(classnames):
        for synonym in [name] if isinstance(name, str) else name:
            ours.setdefault(normalise_name(synonym), index)
    alias = {normalise_name(k): v for k, v in (aliases or {}).items()}
    matched: dict[int, int] = {}
    for index, name in enumerate(source_names):
        key = normalise_name(name)
        key = normalise_name(alias.get(key, key))
        if key in ours:
            matched[index] = ours[key]
    if len(set(matched.values())) != len(matched):
        raise ArtifactError(f"{task}: several source classes match the same class name; "
                            "check mass_pipeline/data/prompts.json")
    if len(matched) == len(source_names):
        perm = [matched[i] for i in range(len(source_names))]
        if perm == list(range(len(perm))):
            return None, []
        moved = [f"{i} {source_names[i]!r} -> {j}" for i, j in enumerate(perm) if i != j]
        return perm, [f"source labels mapped by name onto the published label order ({len(moved)} moved: "
                      f"{', '.join(moved)})"]
    misplaced = {i: j for i, j in matched.items() if i != j}
    if misplaced:
        raise ArtifactError(f"{task}: the source orders its classes differently (e.g. source label "
                            f"{next(iter(misplaced))} is class {next(iter(misplaced.values()))} here) but not every "
                            "source class name matches one in mass_pipeline/data/prompts.json, so the labels "
                            "cannot be mapped by name; add aliases for the differently spelled names")
    unmatched = [f"{i} {source_names[i]!r}" for i in range(len(source_names)) if i not in matched]
    return None, [f"labels kept in the source's order ({len(matched)} of {len(source_names)} class names agree at "
                  f"the same index); spelled differently in the source: {', '.join(unmatched)}"]


def shared_head(task: str) -> SharedHead | None:
    """The shared head ``task`` belongs to, or None if it has its own."""
    name = SOURCES[task].head
    return named_shared_head(name) if name else None


def named_shared_head(name: str) -> SharedHead | None:
    """The shared head called ``name`` (e.g. "CIFAR10_STL10"), or None if there is none."""
    entry = load_prompts()["shared_heads"].get(name)
    if entry is None:
        return None
    return SharedHead(name, tuple(entry["classnames"]), tuple(entry["templates"]),
                      {t: tuple(m) for t, m in entry["label_maps"].items()})


def benchmark_head(task: str, tasks: Iterable[str]) -> SharedHead | None:
    """The shared head ``task`` uses in a benchmark of ``tasks``: only if all its members are there."""
    head = shared_head(task) if task in SOURCES else None
    return head if head is not None and set(head.label_maps) <= set(tasks) else None
