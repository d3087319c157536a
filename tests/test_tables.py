"""Tables and figures summarise exactly the per-task results they are drawn from."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from mass.methods import TABLE2_ROWS, TABLE3_ROWS, TSVC_SETTINGS
from mass.steps import collect_results, make_plots, make_tables

METHODS = ["zeroshot", "finetuned", "weight_averaging", "task_arithmetic", "consensus", "tsvm", "iso_c", "iso_cts",
           "mass_proj", "mass_nn", "mass_mlp", "mass_proj_pre", "mass_batched", "tsvc", "tsvc_size"]
SIZES = {"tsvc": [0.26, 0.24, 0.25], "tsvc_size": [0.1, 0.098, 0.099]}
FINETUNED = {"t1": 0.80, "t2": 0.95, "t3": 0.50}


def run_cli(module, args: list, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *map(str, args)])
    module.main()


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
                                     routing_accuracy=None, size_fraction=SIZES.get(method, [None] * 3)[t],
                                     finetuned=FINETUNED[task], normalized=acc / FINETUNED[task]))
    return pd.DataFrame(rows)


def rounds_from(shown: float, exact: float) -> bool:
    """``shown`` is ``exact`` rounded to one decimal (either way on a floating-point tie)."""
    return abs(float(shown) - exact) <= 0.05 + 1e-9 and float(shown) == round(float(shown), 1)


def assert_tables_summarise(per_task_csv: Path, tables: Path) -> None:
    """Every cell of Tables 2 and 3 (LaTeX and CSV) and of the comparison with the paper equals the mean of its
    per-task rows, in %, rounded to one decimal; the comparison shows the same numbers as Table 2."""
    per_task = pd.read_csv(per_task_csv, dtype={"benchmark": str})
    table2 = pd.read_csv(tables / "table2.csv", header=[0, 1], index_col=0)
    table3 = pd.read_csv(tables / "table3.csv", header=[0, 1], index_col=0)
    vs_paper = pd.read_csv(tables / "table2_vs_paper.csv", dtype={"benchmark": str})
    tex2, tex3 = (tables / "table2.tex").read_text(), (tables / "table3.tex").read_text()
    published = make_tables.published()
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
                values = published[key].get(method, {}).get(backbone)
                if values and bench in published["benchmarks"]:
                    paper = values[published["benchmarks"].index(bench)]
                    assert row[f"paper {kind}"] == paper
                    assert row[f"difference {kind}"] == pytest.approx(round(row[f"reproduced {kind}"] - paper, 1))
                else:
                    assert pd.isna(row[f"paper {kind}"]) and pd.isna(row[f"difference {kind}"])
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


def test_tables_equal_the_means_of_hand_written_per_task_results(tmp_path, monkeypatch):
    hand_written_per_task().to_csv(tmp_path / "per_task.csv", index=False)
    run_cli(make_tables, ["--per-task", tmp_path / "per_task.csv", "--out-dir", tmp_path], monkeypatch)
    assert_tables_summarise(tmp_path / "per_task.csv", tmp_path)
    table2 = pd.read_csv(tmp_path / "table2.csv", header=[0, 1], index_col=0)
    # spot checks by hand: fine-tuned is (0.80 + 0.95) / 2, zero-shot of tiny/8 is (0.125 + 0.6) / 2 * 0.9
    assert table2.loc["Fine-tuned", ("ViT-B-32", "8 tasks")] == "87.5 (100.0)"
    assert table2.loc["Zero-shot", ("tiny", "8 tasks")].startswith("32.6 (")
    assert list(table2.index) == list(TABLE2_ROWS.values())
    vs = pd.read_csv(tmp_path / "table2_vs_paper.csv", dtype={"benchmark": str})
    row = vs[(vs.method == "Fine-tuned") & (vs.backbone == "ViT-B-32") & (vs.benchmark == "8")].iloc[0]
    assert (row["paper abs"], row["reproduced abs"], row["difference abs"]) == (92.8, 87.5, -5.3)
    for name in ("table2", "table2_vs_paper", "table3"):
        tex = (tmp_path / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex


def test_collect_results_records_every_number_and_every_choice(tmp_path, monkeypatch):
    def dump(name: str, data: dict) -> Path:
        (tmp_path / name).write_text(json.dumps(data))
        return tmp_path / name

    endpoints = [f"tiny:{dump(f'ep_{t}.json', {'task': t, 'finetuned_test': ft, 'zeroshot_test': ft / 2})}"
                 for t, ft in FINETUNED.items()]
    mass = dump("mass.json", {"method": "mass_proj", "test": {"t1": 0.7, "t2": 0.9},
                              "routing_accuracy": {"t1": 1.0, "t2": 0.5},
                              "hyperparameters": {"layer": "3.mlp.in", "eta": 0.21, "eta_selected_on": "val"}})
    ta = dump("ta.json", {"method": "task_arithmetic", "test": {"t1": 0.4, "t2": 0.6},
                          "hyperparameters": {"alpha": 0.3, "selected_on": "val"}})
    cons = dump("cons.json", {"method": "consensus", "test": {"t1": 0.5, "t2": 0.6},
                              "hyperparameters": {"alpha": 0.5, "lambdas": {"t1": 0.2, "t2": 0.4}}})
    eps = dump("eps.json", {"epsilon": "0.3", "merge_file": "m.safetensors", "selected_on": "val",
                            "scores": {"0.3": {"layer": "3.mlp.in", "val_routing_accuracy": 0.9}}})
    run_cli(collect_results, ["--results", f"tiny:2:{mass}", f"tiny:2:{ta}", f"tiny:2:{cons}",
                              "--endpoints", *endpoints, "--epsilons", f"tiny:2:{eps}",
                              "--out", tmp_path / "per_task.csv", "--hparams-out", tmp_path / "hp.json"], monkeypatch)
    per_task = pd.read_csv(tmp_path / "per_task.csv", dtype={"benchmark": str}).set_index(["method", "task"])
    assert per_task.loc[("mass_proj", "t2"), "accuracy"] == 0.9
    assert per_task.loc[("mass_proj", "t2"), "routing_accuracy"] == 0.5
    assert per_task.loc[("mass_proj", "t1"), "normalized"] == pytest.approx(0.7 / 0.8)
    assert per_task.loc[("zeroshot", "t2"), "accuracy"] == pytest.approx(0.475)
    assert per_task.loc[("finetuned", "t1"), "normalized"] == 1.0
    assert "t3" not in per_task.index.get_level_values("task")  # only the benchmark's tasks
    chosen = json.loads((tmp_path / "hp.json").read_text())["tiny"]["2"]
    assert chosen["epsilon"]["epsilon"] == "0.3" and chosen["epsilon"]["selected_on"] == "val"
    assert (chosen["mass_proj"]["layer"], chosen["mass_proj"]["eta"]) == ("3.mlp.in", 0.21)
    assert chosen["task_arithmetic"]["alpha"] == 0.3
    assert chosen["consensus"]["lambdas"] == {"t1": 0.2, "t2": 0.4}


def test_figures_are_drawn_with_their_numbers_beside_them(tmp_path, monkeypatch):
    per_task = hand_written_per_task()
    per_task.to_csv(tmp_path / "per_task.csv", index=False)
    sweep = pd.DataFrame([dict(layer=f"{b}.{m}.{io}", label="", block=b, module=m, io=io, token=tok, task=t,
                               accuracy=(b + 1) / 6 * (0.9 if m == "attn" else 1.0) * (1 - 0.2 * (t == "t2")))
                          for b in range(6) for m in ("attn", "mlp") for io in ("in", "out") for tok in ("cls", "mean")
                          for t in ("t1", "t2")])
    sweep.to_csv(tmp_path / "sweep.csv", index=False)
    (tmp_path / "hp.json").write_text(json.dumps({"tiny": {"8": {"mass_proj": {"layer": "4.mlp.in"}}}}))
    run_cli(make_plots, ["--per-task", tmp_path / "per_task.csv", "--hparams", tmp_path / "hp.json",
                         "--sweeps", f"tiny:8:{tmp_path / 'sweep.csv'}", "--out-dir", tmp_path / "figures",
                         "--dpi", 40], monkeypatch)
    figures = tmp_path / "figures"
    for stem in ("radar_8", "radar_3", "per_layer_tiny_8", "batched"):
        for ext in ("pdf", "png"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 1000, stem
    radar = pd.read_csv(figures / "radar_3.csv", dtype={"benchmark": str})
    mass = per_task[(per_task.method == "mass_proj") & (per_task.benchmark == "3")]
    assert sorted(radar.normalized) == pytest.approx(sorted(mass.normalized))
    assert set(radar.backbone) == {"ViT-B-32", "tiny"}
    layers = pd.read_csv(figures / "per_layer_tiny_8.csv")
    assert set(layers.io) == {"in"} and set(layers.token) == {"cls"} and set(layers.module) == {"attn", "mlp"}
    expected = sweep[(sweep.io == "in") & (sweep.token == "cls")].groupby(["block", "module"]).accuracy
    got = layers.drop_duplicates(["block", "module"]).set_index(["block", "module"])
    assert got.mean_over_tasks.sort_index().tolist() == pytest.approx(expected.mean().sort_index().tolist())
    assert got.std_over_tasks.sort_index().tolist() == pytest.approx(expected.std().sort_index().tolist())
    batched = pd.read_csv(figures / "batched.csv", dtype={"benchmark": str}).set_index(
        ["backbone", "benchmark", "method"]).normalized
    means = per_task.groupby(["backbone", "benchmark", "method"]).normalized.mean()
    for key, value in batched.items():
        assert value == pytest.approx(means[key])
    assert len(batched) == 2 * 2 * 2
