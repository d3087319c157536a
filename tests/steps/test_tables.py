"""Tables and figures summarise exactly the per-task results they are drawn from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from support.tables import FINETUNED, assert_tables_summarise, hand_written_per_task, plot_options, run_cli, write_csv

from mass.io import write_json
from mass_pipeline.methods import TABLE2_ROWS
from mass_pipeline.results import Endpoints, EpsilonChoice, MethodResult
from mass_pipeline.steps import collect_results, make_plots, make_tables


def test_tables_equal_the_means_of_hand_written_per_task_results(tmp_path, monkeypatch):
    write_csv(hand_written_per_task(), tmp_path / "per_task.csv")
    from mass.data.store import TaskInfo, save_info
    save_info(tmp_path / "data", TaskInfo("DTD", ["a"], ["{c}"], split_sizes={"train": 3384, "val": 376, "test": 1880},
                                          source_image_sizes=[[300, 231], [640, 640]]))
    save_info(tmp_path / "data", TaskInfo("MNIST", ["0"], ["{c}"], split_sizes={"train": 55000, "val": 5000,
                                                                                 "test": 10000},
                                          source_image_sizes=[[28, 28], [28, 28]]))
    run_cli(make_tables, ["--per-task", tmp_path / "per_task.csv", "--edition", "first", "--wemoe-adapt-on", "test",
                          "--task-info", tmp_path / "data" / "DTD" / "info.json",
                          tmp_path / "data" / "MNIST" / "info.json", "--out-dir", tmp_path], monkeypatch)
    assert "WEMoE$^\\star$: routers adapted on the unlabelled test images" in (tmp_path / "table2.tex").read_text()
    table4 = pd.read_csv(tmp_path / "table4.csv").set_index("task")
    assert table4.loc["DTD"].tolist() == ["varies (300-640 × 231-640)", 3384, 376, 1880, "varies", 1692, 188, 1880]
    assert table4.loc["MNIST"].tolist() == ["28×28", 55000, 5000, 10000, "28×28", 55000, 5000, 10000]
    assert_tables_summarise(tmp_path / "per_task.csv", tmp_path)
    table2 = pd.read_csv(tmp_path / "table2.csv", header=[0, 1], index_col=0)
    # spot checks by hand: fine-tuned is (0.80 + 0.95) / 2, zero-shot of tiny/8 is (0.125 + 0.6) / 2 * 0.9
    assert table2.loc["Fine-tuned", ("ViT-B-32", "8 tasks")] == "87.5 (100.0)"
    assert table2.loc["Zero-shot", ("tiny", "8 tasks")].startswith("32.6 (")
    assert list(table2.index) == list(TABLE2_ROWS.values())
    vs = pd.read_csv(tmp_path / "table2_vs_paper.csv", dtype={"benchmark": str})
    row = vs[(vs.method == "Fine-tuned") & (vs.backbone == "ViT-B-32") & (vs.benchmark == "8")].iloc[0]
    assert (row["paper abs"], row["reproduced abs"], row["difference abs"]) == (92.8, 87.5, -5.3)
    for name in ("table2", "table2_vs_paper", "table3", "table4"):
        tex = (tmp_path / f"{name}.tex").read_text()
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex


def test_collect_results_records_every_number_and_every_choice(tmp_path, monkeypatch):
    def dump(name: str, record) -> Path:
        record.save(tmp_path / name)
        return tmp_path / name

    endpoints = [f"tiny:{dump(f'ep_{t}.json', Endpoints(t, ft / 2, ft / 2, ft, ft))}" for t, ft in FINETUNED.items()]
    mass = dump("mass.json", MethodResult("mass_proj", {"t1": 0.7, "t2": 0.9},
                                          {"layer": "3.mlp.in", "eta": 0.21, "eta_selected_on": "val"},
                                          routing_accuracy={"t1": 1.0, "t2": 0.5}))
    ta = dump("ta.json", MethodResult("task_arithmetic", {"t1": 0.4, "t2": 0.6}, {"alpha": 0.3, "selected_on": "val"}))
    cons = dump("cons.json", MethodResult("consensus", {"t1": 0.5, "t2": 0.6},
                                          {"alpha": 0.5, "lambdas": {"t1": 0.2, "t2": 0.4}}))
    eps = dump("eps.json", EpsilonChoice("0.3", "m.safetensors", "val",
                                         {"0.3": {"layer": "3.mlp.in", "val_routing_accuracy": 0.9}}))
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
    # a fine-tuned accuracy of 0 (random weights on three images) leaves normalised accuracy undefined, not inf
    zero = dump("ep_t1.json", Endpoints("t1", 0.0, 0.0, 0.0, 0.0))
    run_cli(collect_results, ["--results", f"tiny:2:{mass}", "--endpoints", f"tiny:{zero}", endpoints[1],
                              "--epsilons", f"tiny:2:{eps}", "--out", tmp_path / "zero.csv",
                              "--hparams-out", tmp_path / "hp0.json"], monkeypatch)
    normalized = pd.read_csv(tmp_path / "zero.csv").set_index(["method", "task"]).normalized
    assert pd.isna(normalized[("mass_proj", "t1")]) and normalized[("mass_proj", "t2")] == pytest.approx(0.9 / 0.95)
    chosen = json.loads((tmp_path / "hp.json").read_text())["tiny"]["2"]
    assert chosen["epsilon"]["epsilon"] == "0.3" and chosen["epsilon"]["selected_on"] == "val"
    assert (chosen["mass_proj"]["layer"], chosen["mass_proj"]["eta"]) == ("3.mlp.in", 0.21)
    assert chosen["task_arithmetic"]["alpha"] == 0.3
    assert chosen["consensus"]["lambdas"] == {"t1": 0.2, "t2": 0.4}


def test_figures_are_drawn_with_their_numbers_beside_them(tmp_path, monkeypatch):
    per_task = hand_written_per_task()
    write_csv(per_task, tmp_path / "per_task.csv")
    sweep = pd.DataFrame([dict(layer=f"{b}.{m}.{io}", label="", block=b, module=m, io=io, token=tok, task=t,
                               accuracy=(b + 1) / 6 * (0.9 if m == "attn" else 1.0) * (1 - 0.2 * (t == "t2")))
                          for b in range(6) for m in ("attn", "mlp") for io in ("in", "out") for tok in ("cls", "mean")
                          for t in ("t1", "t2")])
    write_csv(sweep, tmp_path / "sweep.csv")
    write_json(tmp_path / "hp.json", {"tiny": {"8": {"mass_proj": {"layer": "4.mlp.in"}}}})
    run_cli(make_plots, ["--per-task", tmp_path / "per_task.csv", "--hparams", tmp_path / "hp.json",
                         "--sweeps", f"tiny:8:{tmp_path / 'sweep.csv'}", "--out-dir", tmp_path / "figures",
                         *plot_options()], monkeypatch)
    figures = tmp_path / "figures"
    for stem in ("radar_8", "radar_3", "per_layer_tiny_8", "batched"):
        for ext in ("pdf", "png"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 1000, stem
    radar = pd.read_csv(figures / "radar_3.csv", dtype={"benchmark": str})
    for method in ("mass_proj", "smile", "wemoe"):  # MASS and the other MoErging methods, each backbone
        drawn = per_task[(per_task.method == method) & (per_task.benchmark == "3")]
        assert sorted(radar[radar.method == method].normalized) == pytest.approx(sorted(drawn.normalized))
    assert set(radar.method) == {"mass_proj", "smile", "wemoe"} and set(radar.backbone) == {"ViT-B-32", "tiny"}
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


def test_final_editions_table2_rows_cite_their_records(tmp_path, monkeypatch):
    """The final edition's published numbers beside hand-written results, each with its record: its fine-tuned
    row from the official code's accs.json, the methods from the public transcription of its Table 2 (the
    dress rehearsal runs the final edition on three tasks in make test, whose benchmark publishes nothing)."""
    write_csv(hand_written_per_task(), tmp_path / "per_task.csv")
    run_cli(make_tables, ["--per-task", tmp_path / "per_task.csv", "--edition", "final", "--wemoe-adapt-on", "test",
                          "--out-dir", tmp_path], monkeypatch)
    assert_tables_summarise(tmp_path / "per_task.csv", tmp_path)
    vs = pd.read_csv(tmp_path / "table2_vs_paper.csv", dtype={"benchmark": str}).set_index(["method", "backbone",
                                                                                            "benchmark"])
    assert set(vs.edition) == {"final"}
    published = vs[vs["paper abs"].notna()]
    assert {"Fine-tuned", TABLE2_ROWS["mass_proj"]} <= set(published.loc[(slice(None), "ViT-B-32", "8"), :].index
                                                           .get_level_values("method"))
    assert published["source abs"].notna().all()  # each with its record
    assert "accs.json" in published.loc[("Fine-tuned", "ViT-B-32", "8"), "source abs"]
    assert "en.papernotes.org" in published.loc[(TABLE2_ROWS["mass_proj"], "ViT-B-32", "8"), "source abs"]
    assert vs.loc[(slice(None), "tiny"), "paper abs"].isna().all()  # no edition publishes the demo's backbone
