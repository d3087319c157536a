"""Where routing fails: the confusion matrix and selection sizes summarise exactly the per-sample routing
that a MASS result's per-task numbers come from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from support.routing import check_routing_figures
from support.tables import hand_written_per_task, plot_options, run_cli, write_csv

from mass.io import save_arrays, write_json
from mass.routing import routing_accuracy_per_task
from mass_pipeline.routing_analysis import (
    MULTI_WITH_TRUE,
    MULTI_WITHOUT_TRUE,
    confusion_counts,
    selection_sizes,
    top1_counts,
)
from mass_pipeline.steps import make_plots

NAMES = ["t1", "t2", "t3"]


def hand_routing() -> dict[str, np.ndarray]:
    """Seven samples: t1 x3, t2 x2, t3 x2, with single and multi-task selections."""
    task = np.array([0, 0, 0, 1, 1, 2, 2])
    selection = np.array([[1, 0, 0],   # t1 alone: right
                          [1, 1, 0],   # several, true among them
                          [0, 1, 0],   # t2 alone: wrong
                          [0, 1, 0],   # right
                          [1, 0, 1],   # several, true not among them
                          [0, 0, 1],   # right
                          [1, 1, 1]], dtype=bool)
    routed = np.array([0, 1, 1, 1, 0, 2, 2])
    return {"selection": selection, "task": task, "routed": routed, "tasks": np.array(NAMES)}


def test_confusion_counts_by_hand():
    r = hand_routing()
    counts = confusion_counts(r["selection"], r["task"], NAMES)
    assert counts.loc["t1"].tolist() == [1, 1, 0, 1, 0]
    assert counts.loc["t2"].tolist() == [0, 1, 0, 0, 1]
    assert counts.loc["t3"].tolist() == [0, 0, 1, 1, 0]
    assert list(counts.columns[-2:]) == [MULTI_WITH_TRUE, MULTI_WITHOUT_TRUE]
    assert counts.sum(axis=1).tolist() == [3, 2, 2]  # every sample once, in its true task's row
    top = top1_counts(r["routed"], r["task"], NAMES)
    assert np.diag(top).tolist() == [1, 1, 2]
    sizes = selection_sizes(r["selection"], r["task"], NAMES, max_size=3).set_index(["task", "size"])
    assert sizes.loc[("t1", 1), "count"] == 2 and sizes.loc[("t1", 2), "count"] == 1
    assert sizes.loc[("all", 3), "count"] == 1 and sizes.loc[("t2", 3), "fraction"] == 0
    with pytest.raises(ValueError, match="empty selection"):
        confusion_counts(np.zeros((1, 3), bool), np.array([0]), NAMES)


def test_routing_figures_summarise_the_per_sample_routing(tmp_path, monkeypatch):
    per_task = hand_written_per_task()
    write_csv(per_task, tmp_path / "per_task.csv")
    sweep = pd.DataFrame([dict(layer=f"{b}.mlp.in", label="", block=b, module=m, io="in", token="cls", task=t,
                               accuracy=0.5) for b in range(3) for m in ("attn", "mlp") for t in NAMES])
    write_csv(sweep, tmp_path / "sweep.csv")
    write_json(tmp_path / "hp.json", {})
    routing = hand_routing()
    save_arrays(tmp_path / "routing.npz", **routing)
    run_cli(make_plots, ["--per-task", tmp_path / "per_task.csv", "--hparams", tmp_path / "hp.json",
                         "--sweeps", f"tiny:3:{tmp_path / 'sweep.csv'}",
                         "--routing", f"tiny:3:{tmp_path / 'routing.npz'}",
                         "--out-dir", tmp_path / "figures", *plot_options()], monkeypatch)
    figures = tmp_path / "figures"
    for stem in ("confusion_tiny_3", "selection_sizes_tiny_3"):
        for ext in ("pdf", "png"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 1000, stem
    # what evaluate_mass records from the same routing
    result = {"routing_accuracy": routing_accuracy_per_task(torch.from_numpy(routing["routed"]),
                                                            torch.from_numpy(routing["task"]), NAMES),
              "mean_selected_tasks": float(routing["selection"].sum(1).mean())}
    check_routing_figures(figures, "tiny_3", routing, result)
