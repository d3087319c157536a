"""The editions of the paper a run can reproduce, each with the numbers it published and their records.

The MASS paper exists in two editions computed on different inputs (docs/data.md, "The two
editions"): the first (arXiv 2504.05342 v1) on the TALL-masks checkpoints as they were before the
hub replaced the DTD one in December 2024, the final one (ICLR 2026) on the authors' re-fine-tuned
``crisostomi`` encoders with a changed protocol. A run names its edition in the config
(``edition``); this module holds, per edition (package data ``data/editions/<name>.json``):

* ``records``: where each published number was read, and whether that record is primary (the
  paper or the authors' result files) or secondary (a transcription by someone else);
* ``finetuned_accuracy``: the published fine-tuned test accuracy per backbone and task, against
  which ``check_provenance`` compares the run's own endpoints before any merge is built;
* ``deviations``: tasks whose published checkpoint can no longer be had, with the reason (the
  check reports them and goes on);
* ``tables``: the published Table 2 / Table 3 numbers, per method, backbone and benchmark;
* ``class_spaces``: how its heads' classes follow from the sources (the final edition: each source's
  own names and order, with a few remaps and overrides), if not as the first edition's published heads.

The ``demo`` edition publishes nothing: its check reports that there is nothing to compare with. The
``fusionbench`` entry is no edition of the MASS paper but the same mechanism for another source of
encoders: FusionBench's published accuracies of its own fine-tuned CLIP models (``sources.finetuned_layout:
fusionbench``), per task and for the merges its docs report on 8 tasks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

EDITIONS = ("first", "final", "fusionbench", "demo")
# Benchmarks of the published tables, in the order of each value list.
TABLE_BENCHMARKS = ("8", "14", "20")


@dataclass(frozen=True)
class Record:
    """Where published numbers were read: a citation, and ``primary`` (the paper, the authors'
    files) or ``secondary`` (someone else's transcription, marked wherever it is shown)."""

    cite: str
    kind: str

    @property
    def secondary(self) -> bool:
        return self.kind == "secondary"


@dataclass(frozen=True)
class PublishedTable:
    """One published table: ``values[method][backbone]`` lists the 8/14/20-task numbers (None where the
    record gives none); each method's record is ``method_records.get(method, record)``; ``notes`` keyed
    ``"<method>/<backbone>/<benchmark>"`` say what is doubtful about a number."""

    record: str
    values: dict[str, dict[str, list[float | None]]]
    method_records: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def value(self, method: str, backbone: str, bench: str) -> tuple[float | None, str | None]:
        """The published number of one cell and the key of its record, or (None, None)."""
        row = self.values.get(method, {}).get(backbone)
        if not row or bench not in TABLE_BENCHMARKS or row[TABLE_BENCHMARKS.index(bench)] is None:
            return None, None
        return row[TABLE_BENCHMARKS.index(bench)], self.method_records.get(method, self.record)


@dataclass(frozen=True)
class ClassSpace:
    """How an edition turns a source's labels into a head's classes, where it departs from the source:
    ``label_map[i]`` is the class of the source's label i (None: the same), ``classnames`` the head's
    class names in class order (None: the source's own names)."""

    label_map: tuple[int, ...] | None = None
    classnames: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Edition:
    """One edition of the paper: what it published and where each number was read."""

    name: str
    title: str
    records: dict[str, Record]
    finetuned_record: str | None = None
    finetuned_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    deviations: dict[str, str] = field(default_factory=dict)
    tables: dict[str, PublishedTable] = field(default_factory=dict)
    # None: heads in the label order and with the class names of the first edition's published heads
    # (prompts.json of mass.data, sources mapped onto them by name; CIFAR10 and STL10 share a head in the
    # 20-task benchmark). A dict: each task's head has the source's own classes in the source's order, but
    # where the edition departs from them (its ClassSpace), and no head is shared.
    class_spaces: dict[str, ClassSpace] | None = None
    class_spaces_record: str | None = None
    # the published Table 4: per task {"image_size", "train", "val", "test"}, and its record
    dataset_sizes: dict[str, dict] = field(default_factory=dict)
    dataset_sizes_record: str | None = None

    def published_finetuned(self, backbone: str, task: str) -> float | None:
        """The published fine-tuned test accuracy (a fraction), or None where the edition gives none."""
        return self.finetuned_accuracy.get(backbone, {}).get(task)

    def record(self, key: str | None) -> Record | None:
        return None if key is None else self.records[key]


def load_edition(name: str) -> Edition:
    """The edition ``name`` (one of :data:`EDITIONS`), read from the package data."""
    if name not in EDITIONS:
        raise ValueError(f"unknown edition {name!r}: the config key `edition` takes one of {list(EDITIONS)}")
    data = json.loads((resources.files("mass_pipeline") / "data" / "editions" / f"{name}.json").read_text())
    finetuned = data.get("finetuned_accuracy") or {}
    spaces = data.get("class_spaces")
    return Edition(
        name=data["name"], title=data["title"],
        records={key: Record(**rec) for key, rec in data["records"].items()},
        finetuned_record=finetuned.get("record"), finetuned_accuracy=finetuned.get("values", {}),
        deviations=data.get("deviations", {}),
        tables={key: PublishedTable(**table) for key, table in data.get("tables", {}).items()},
        class_spaces=None if spaces is None else {
            task: ClassSpace(tuple(c["label_map"]) if c.get("label_map") is not None else None,
                             tuple(c["classnames"]) if c.get("classnames") is not None else None)
            for task, c in spaces["tasks"].items()},
        class_spaces_record=None if spaces is None else spaces["record"],
        dataset_sizes=(data.get("dataset_sizes") or {}).get("values", {}),
        dataset_sizes_record=(data.get("dataset_sizes") or {}).get("record"),
    )
