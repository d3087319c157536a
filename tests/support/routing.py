"""The check that the routing figures' CSVs summarise the per-sample routing (steps and workflow tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mass_pipeline.routing_analysis import MULTI_WITH_TRUE

NAMES = ["t1", "t2", "t3"]


def check_routing_figures(figures: Path, stem: str, routing: dict[str, np.ndarray], mass_result: dict) -> None:
    """The CSVs beside the confusion and selection-size figures against the per-sample routing and the
    per-task numbers of the MASS result: rows sum to each task's test size, the top-ranked-task diagonal is
    the routing accuracy, the single-task diagonal is never above it, the mean size is mean_selected_tasks."""
    names = [str(n) for n in routing["tasks"]]
    task, selection = np.asarray(routing["task"]), np.asarray(routing["selection"], bool)
    sizes_of_tasks = np.bincount(task, minlength=len(names))
    conf = pd.read_csv(figures / f"confusion_{stem}.csv")
    for matrix in ("selection", "top1"):
        m = conf[conf.matrix == matrix]
        per_task = m.groupby("true_task", sort=False)["count"].sum()
        assert [per_task[n] for n in names] == sizes_of_tasks.tolist()
        assert m.groupby("true_task").fraction.sum().tolist() == pytest.approx([1.0] * len(names))
    for t, name in enumerate(names):
        top = conf[(conf.matrix == "top1") & (conf.true_task == name) & (conf.sent_to == name)]["count"].item()
        alone = conf[(conf.matrix == "selection") & (conf.true_task == name) & (conf.sent_to == name)]["count"].item()
        assert top / sizes_of_tasks[t] == pytest.approx(mass_result["routing_accuracy"][name])
        assert alone <= top + conf[(conf.matrix == "selection") & (conf.true_task == name)
                                   & (conf.sent_to == MULTI_WITH_TRUE)]["count"].item()
        own = selection[task == t]
        assert alone == int(((own.sum(1) == 1) & own[:, t]).sum())  # routed to the true task alone
    sizes = pd.read_csv(figures / f"selection_sizes_{stem}.csv")
    overall = sizes[sizes.task == "all"]
    assert overall["count"].sum() == len(task)
    assert (overall["size"] * overall["count"]).sum() / len(task) == pytest.approx(mass_result["mean_selected_tasks"])
    for t, name in enumerate(names):
        assert sizes[sizes.task == name]["count"].sum() == sizes_of_tasks[t]
