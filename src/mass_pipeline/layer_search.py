"""Which layer routes best: per-location routing (task-identification) accuracy and the best candidate.

For every location the first pass recorded, the projection router's top-1 task (smallest residual)
is compared with the true task. The routing location is the candidate with the highest mean over
tasks on validation; the paper searches blocks 7-11 for ViT-B and 19-23 for ViT-L. Epsilon is
chosen by the same score (:func:`best_location` over each epsilon's validation sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from mass.forward import FirstPassResult
from mass.routing import routing_accuracy_per_task
from mass.task_vectors import LayerId, Location


@dataclass(frozen=True)
class Candidates:
    """The routing locations searched: blocks ``low``-``high`` (inclusive), these modules, one io and token."""

    blocks: tuple[int, int]
    modules: tuple[str, ...] = ("attn", "mlp")
    io: str = "in"
    token: str = "cls"


def sweep(result: FirstPassResult, tasks: Sequence[str]) -> pd.DataFrame:
    """One row per (recorded location, task): its top-1 routing accuracy."""
    rows = []
    for location, residuals in result.residuals.items():
        layer = location.layer
        for task, acc in routing_accuracy_per_task(residuals.argmin(-1), result.task, list(tasks)).items():
            rows.append({"layer": str(layer), "label": layer.label, "block": layer.block, "module": layer.module,
                         "io": layer.io, "token": location.token, "task": task, "accuracy": acc})
    return pd.DataFrame(rows).sort_values(["io", "token", "block", "module", "task"], kind="stable")


def best_location(table: pd.DataFrame, candidates: Candidates) -> tuple[Location, float]:
    """The candidate with the highest mean-over-tasks routing accuracy (first on ties) and that mean."""
    c = candidates
    rows = table[(table.block >= c.blocks[0]) & (table.block <= c.blocks[1]) & table.module.isin(c.modules)
                 & (table.io == c.io) & (table.token == c.token)]
    if rows.empty:
        raise ValueError(f"no recorded routing location in blocks {c.blocks}, modules {list(c.modules)}, "
                         f"io {c.io}, token {c.token}; check routing.* and first_pass.* in the config")
    means = rows.groupby(["block", "module", "io"], sort=False).accuracy.mean()
    block, module, io = means.idxmax()
    return Location(LayerId(int(block), module, io), c.token), float(means.max())
