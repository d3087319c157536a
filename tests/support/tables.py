"""Hand-written per-task results and the checks that the tables summarise them (steps and workflow tests)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mass.io import atomic_path
from mass_pipeline.editions import load_edition
from mass_pipeline.methods import ROUTING_ROWS, TABLE2_ROWS, TABLE3_ROWS, TSVC_SETTINGS

METHODS = ["zeroshot", "finetuned", "weight_averaging", "task_arithmetic", "consensus", "tsvm", "iso_c", "iso_cts",
           "smile", "wemoe", "mass_proj", "mass_nn", "mass_mlp", "mass_proj_pre", "mass_batched", "tsvc", "tsvc_size"]


SIZES = {"tsvc": [0.26, 0.24, 0.25], "tsvc_size": [0.1, 0.098, 0.099]}


FINETUNED = {"t1": 0.80, "t2": 0.95, "t3": 0.50}


def plot_options(dpi: int = 40) -> list:
    """The options of make_plots that its rule passes from the config, at config.yaml's values (a low dpi
    keeps the tests fast)."""
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    routing = config["routing"]
    return ["--top-k", routing["top_k"], "--io", routing["io"], "--token", routing["token"],
            "--style", config["plots"]["style"], "--dpi", dpi]


def run_cli(module, args: list, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *map(str, args)])
    module.main()


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """A table as the steps write theirs: atomically, with its recorded checksum."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def hand_written_per_task() -> pd.DataFrame:
    """Two backbones x two benchmarks, hand-picked accuracies (not a formula of the indices alone)."""
    rows = []
    for b, backbone in enumerate(["ViT-B-32", "tiny"]):
        for bench, tasks in (("8", ["t1", "t2"]), ("3", ["t1", "t2", "t3"])):
            for m, method in enumerate(METHODS):
                for t, task in enumerate(tasks):
                    scale = 1 - 0.03 * m - 0.1 * b
                    acc = FINETUNED[task] if method == "finetuned" else [0.125, 0.6, 0.777][t] * scale
                    rows.append(dict(backbone=backbone, benchmark=bench, method=method, task=task, accuracy=acc,
                                     routing_accuracy=[0.5, 0.75, 0.9][t] * scale if method in ROUTING_ROWS else None,
                                     size_fraction=SIZES.get(method, [None] * 3)[t],
                                     finetuned=FINETUNED[task], normalized=acc / FINETUNED[task]))
    return pd.DataFrame(rows)


def rounds_from(shown: float, exact: float) -> bool:
    """``shown`` is ``exact`` rounded to one decimal (either way on a floating-point tie)."""
    return abs(float(shown) - exact) <= 0.05 + 1e-9 and float(shown) == round(float(shown), 1)


def assert_tables_summarise(per_task_csv: Path, tables: Path) -> None:
    """Every cell of Tables 2 and 3 and of the routing-accuracy table (LaTeX and CSV) and of the comparison with
    the paper equals the mean of its per-task rows, in %, rounded to one decimal; the comparison shows the same
    numbers as Table 2."""
    per_task = pd.read_csv(per_task_csv, dtype={"benchmark": str})
    table2 = pd.read_csv(tables / "table2.csv", header=[0, 1], index_col=0)
    table3 = pd.read_csv(tables / "table3.csv", header=[0, 1], index_col=0)
    vs_paper = pd.read_csv(tables / "table2_vs_paper.csv", dtype={"benchmark": str})
    routing = pd.read_csv(tables / "routing_accuracy.csv", header=[0, 1], index_col=0)
    tex2, tex3 = (tables / "table2.tex").read_text(), (tables / "table3.tex").read_text()
    tex_routing = (tables / "routing_accuracy.tex").read_text()
    edition = load_edition(vs_paper.edition.iloc[0]) if len(vs_paper) else None
    checked = 0
    for (backbone, bench, method), rows in per_task.groupby(["backbone", "benchmark", "method"]):
        acc, norm = 100 * rows.accuracy.mean(), 100 * rows.normalized.mean()
        column = (backbone, f"{bench} tasks")
        if method in TABLE2_ROWS:
            name = TABLE2_ROWS[method]
            cell = table2.loc[name, column]
            shown_acc, shown_norm = re.fullmatch(r"(\S+) \((\S+)\)", cell).groups()
            assert rounds_from(shown_acc, acc) and rounds_from(shown_norm, norm), (backbone, bench, method, cell)
            assert f"{name} &" in tex2 and cell in tex2
            row = vs_paper[(vs_paper.method == name) & (vs_paper.backbone == backbone) & (vs_paper.benchmark == bench)]
            assert len(row) == 1
            row = row.iloc[0]
            assert (row["reproduced abs"], row["reproduced norm"]) == (float(shown_acc), float(shown_norm))
            for kind, key in (("abs", "table2_absolute"), ("norm", "table2_normalized")):
                table = edition.tables.get(key)
                paper, record = table.value(method, backbone, bench) if table else (None, None)
                if paper is not None:
                    assert row[f"paper {kind}"] == paper
                    assert row[f"source {kind}"] == edition.records[record].cite
                    assert row[f"difference {kind}"] == pytest.approx(round(row[f"reproduced {kind}"] - paper, 1))
                else:
                    assert pd.isna(row[f"paper {kind}"]) and pd.isna(row[f"difference {kind}"])
            checked += 1
        if method in ROUTING_ROWS:
            shown = routing.loc[ROUTING_ROWS[method], column]
            assert rounds_from(shown, 100 * rows.routing_accuracy.mean()), (backbone, bench, method, shown)
            assert f"{shown:.1f}" in tex_routing
            checked += 1
        if method in TABLE3_ROWS:
            name = TABLE3_ROWS[method]
            shown = table3.loc[name, column]
            assert rounds_from(shown, norm), (backbone, bench, method, shown)
            assert f"{shown:.1f}" in tex3
            checked += 1
    assert checked > 0
    assert_tsvc_table_summarises(per_task, tables)


def assert_tsvc_table_summarises(per_task: pd.DataFrame, tables: Path) -> None:
    """The TSV-C table holds every task's TSV-C accuracy, normalised accuracy and stored size (%) and their
    means; Table 3's oracle row is the mean normalised TSV-C accuracy at the benchmark's k."""
    tsvc = pd.read_csv(tables / "tsvc.csv", dtype={"benchmark": str})
    tex = (tables / "tsvc.tex").read_text()
    table3 = pd.read_csv(tables / "table3.csv", header=[0, 1], index_col=0)
    rows = per_task[per_task.method.isin(list(TSVC_SETTINGS))]
    assert len(tsvc) == len(rows) + rows.groupby(["backbone", "benchmark", "method"]).ngroups
    for (backbone, bench, method), group in rows.groupby(["backbone", "benchmark", "method"]):
        setting = TSVC_SETTINGS[method]
        got = tsvc[(tsvc.backbone == backbone) & (tsvc.benchmark == bench) & (tsvc.setting == setting)]
        got = got.set_index("task")
        for _, r in group.iterrows():
            assert got.loc[r.task, "accuracy"] == pytest.approx(100 * r.accuracy)
            assert got.loc[r.task, "normalized"] == pytest.approx(100 * r.normalized)
            assert got.loc[r.task, "stored size"] == pytest.approx(100 * r.size_fraction)
        for column, key in (("accuracy", "accuracy"), ("normalized", "normalized"), ("stored size", "size_fraction")):
            assert got.loc["mean", column] == pytest.approx(100 * group[key].mean())
        assert f"{got.loc['mean', 'normalized']:.1f}" in tex
        if method == "tsvc":  # the oracle router of Table 3
            shown = table3.loc[TABLE3_ROWS["tsvc"], (backbone, f"{bench} tasks")]
            assert rounds_from(shown, got.loc["mean", "normalized"])
