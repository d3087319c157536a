"""Where routing fails: the task-confusion matrix of a router's selections and their sizes.

Every test sample is counted once, in the row of its true task: in the column of the task it was
sent to alone, or, when the router selected several tasks, in one of two columns (the true task
among them, or not). A row therefore sums to that task's test size, and its diagonal counts the
samples routed to their true task alone. The top-ranked task of every sample (what the
``routing_accuracy`` of a MASS result measures) gives a second, plain T x T matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MULTI_WITH_TRUE = "several, true among them"
MULTI_WITHOUT_TRUE = "several, true not among them"


def confusion_counts(selection: np.ndarray, task: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Counts per true task (rows, benchmark order): selected alone per task, then multi-task selections
    with and without the true task. ``selection``: N x T booleans, ``task``: N true-task indices."""
    selection, task = np.asarray(selection, dtype=bool), np.asarray(task)
    T = len(names)
    if selection.shape != (len(task), T):
        raise ValueError(f"selection is {selection.shape}, expected {(len(task), T)}")
    sizes = selection.sum(1)
    if (sizes == 0).any():
        raise ValueError(f"{int((sizes == 0).sum())} samples have an empty selection")
    counts = np.zeros((T, T + 2), dtype=np.int64)
    rows = np.arange(len(task))
    single = sizes == 1
    np.add.at(counts, (task[single], selection[single].argmax(1)), 1)
    multi = sizes > 1
    has_true = selection[rows, task]
    np.add.at(counts, (task[multi & has_true], T), 1)
    np.add.at(counts, (task[multi & ~has_true], T + 1), 1)
    return pd.DataFrame(counts, index=pd.Index(list(names), name="true task"),
                        columns=[*names, MULTI_WITH_TRUE, MULTI_WITHOUT_TRUE])


def top1_counts(routed: np.ndarray, task: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """T x T counts of (true task, top-ranked task); the diagonal over the row sum is the routing accuracy."""
    T = len(names)
    counts = np.zeros((T, T), dtype=np.int64)
    np.add.at(counts, (np.asarray(task), np.asarray(routed)), 1)
    return pd.DataFrame(counts, index=pd.Index(list(names), name="true task"), columns=list(names))


def selection_sizes(selection: np.ndarray, task: np.ndarray, names: Sequence[str], max_size: int | None = None,
                    ) -> pd.DataFrame:
    """How many tasks were selected per sample, per true task and over all samples: long table with
    columns task, size, count, fraction (sizes 1 .. max_size, default the largest seen)."""
    selection, task = np.asarray(selection, dtype=bool), np.asarray(task)
    sizes = selection.sum(1)
    top = max(int(sizes.max()) if len(sizes) else 1, max_size or 1)
    rows = []
    for label, mask in [*((name, task == t) for t, name in enumerate(names)), ("all", np.ones(len(task), bool))]:
        total = int(mask.sum())
        for size in range(1, top + 1):
            count = int((sizes[mask] == size).sum())
            rows.append({"task": label, "size": size, "count": count, "fraction": count / total if total else 0.0})
    return pd.DataFrame(rows)
