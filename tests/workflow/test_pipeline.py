"""The Snakemake workflow: paper dry run, lint, config validation and the reduced demo end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from support.routing import check_routing_figures
from support.tables import assert_tables_summarise
from support.workflow import ROOT, snakemake, workflow_copy

from mass_pipeline.methods import TABLE2_ROWS

ALL_RULES = {
    "download_dataset", "prepare_dataset", "prepare_train_split", "fetch_pretrained", "fetch_finetuned", "build_head",
    "finetune", "evaluate_endpoints", "check_provenance", "svd_cache", "merge", "first_pass", "routing_sweep",
    "select_epsilon", "routing_features", "evaluate_tsvm", "evaluate_tsvc", "evaluate_baseline", "evaluate_mass",
    "evaluate_batched", "collect_results", "make_tables", "make_plots", "download_descriptions", "interpret_tsv",
    "evaluate_smile", "evaluate_wemoe", "measure_cost", "accuracy_vs_cost",
}
# ci_demo.yaml's benchmark with its last task declared as your own (config key tasks): the demo's checkerboards
# written as an image folder, so that a declared task goes through every rule
OWN_TASK = ("checker", "Checker")
CI_BENCHMARKS = {bench: [OWN_TASK[1] if t == OWN_TASK[0] else t for t in tasks] for bench, tasks in
                 yaml.safe_load((ROOT / "tests" / "ci_demo.yaml").read_text())["benchmarks"].items()}
SOURCE_RULES = {"download_dataset", "prepare_dataset", "prepare_train_split", "fetch_pretrained", "fetch_finetuned",
                "download_descriptions"}
DEMO_RULES = ALL_RULES - SOURCE_RULES | {"generate_demo_task", "pretrain_demo_clip", "demo_descriptions"}


def own_task_overlay(cwd) -> str:
    """The demo's checkerboard task as your own: PNG files in <cwd>/own/checker/{train,test}/<class>/ (as many as
    the generated tasks hold, the same seeds), declared in own.yaml with the demo's class phrases and templates."""
    from PIL import Image

    from mass_pipeline.data import demo

    config = yaml.safe_load((ROOT / "tests" / "ci_demo.yaml").read_text())
    phrases = demo.class_phrases(OWN_TASK[0])
    for split, n, seed in (("train", config["demo"]["n_train"], 0), ("test", config["demo"]["n_test"], 1)):
        images, labels = demo.generate(OWN_TASK[0], n, seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = cwd / "own" / OWN_TASK[0] / split / phrases[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    overlay = {"tasks": {OWN_TASK[1]: {"folder": f"own/{OWN_TASK[0]}", "classnames": phrases,
                                       "templates": list(demo.TEMPLATES)}},
               "benchmarks": CI_BENCHMARKS, "sources": {"image_size": 32}}
    (cwd / "own.yaml").write_text(yaml.safe_dump(overlay))
    return "own.yaml"


def job_counts(output: str) -> dict[str, int]:
    block = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_paper_dry_run_plans_the_3x3_grid_and_every_rule(tmp_path):
    run = snakemake("-n", "--cores", "4", cwd=workflow_copy(tmp_path))
    assert run.returncode == 0, run.stderr
    counts = job_counts(run.stdout)
    assert ALL_RULES <= set(counts), ALL_RULES - set(counts)
    assert counts["evaluate_tsvm"] == 9 and counts["select_epsilon"] == 9
    assert counts["evaluate_tsvc"] == counts["evaluate_smile"] == counts["evaluate_wemoe"] == 9  # per bb x bench
    assert counts["measure_cost"] == 9 and counts["accuracy_vs_cost"] == 1
    assert counts["interpret_tsv"] == 9 and counts["download_descriptions"] == 1  # one pinned pool for all
    assert counts["evaluate_mass"] == 9 * 4 and counts["evaluate_baseline"] == 9 * 5
    assert counts["routing_features"] == 9  # z_l once per benchmark, for both learned routers
    assert counts["fetch_pretrained"] == 3 and counts["download_dataset"] == 20
    for bb in ("ViT-B-32", "ViT-B-16", "ViT-L-14"):
        for bench in ("8", "14", "20"):
            assert f"results/{bb}/{bench}/methods/mass_proj.json" in run.stdout


def test_lint_is_clean():
    run = snakemake("--lint", "--configfile", "workflow/presets/demo.yaml", cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Lints for" not in run.stdout, run.stdout


@pytest.mark.parametrize("override,key", [("routing.token=foo", "token"), ("svd.rank_fraction=2", "rank_fraction"),
                                          ("data_source=web", "data_source")])
def test_bad_config_value_stops_with_the_key(tmp_path, override, key):
    section, rest = override.split(".", 1) if "." in override else (None, override)
    name, value = rest.split("=")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"{section}:\n  {name}: {value}\n" if section else f"{name}: {value}\n")
    run = snakemake("-n", "--configfile", str(cfg), cwd=workflow_copy(tmp_path))
    assert run.returncode != 0
    assert key in run.stderr + run.stdout


@pytest.mark.slow
def test_reduced_demo_runs_every_rule_end_to_end(tmp_path):
    cwd = workflow_copy(tmp_path)
    configs = ("--configfile", "workflow/presets/demo.yaml", "ci_demo.yaml", own_task_overlay(cwd))
    run = snakemake("--cores", "2", *configs, cwd=cwd, timeout=1500, measured=386)
    assert run.returncode == 0, run.stderr[-4000:]
    ran = set(re.findall(r"\(Rule: (\w+)\)", run.stderr + run.stdout))
    assert DEMO_RULES | {"prepare_own_task", "prepare_own_train_split"} <= ran, DEMO_RULES - ran
    own = json.loads((cwd / f"resources/data/demo/{OWN_TASK[1]}/info.json").read_text())
    assert own["notes"][0].startswith(f"source: your files (tasks.{OWN_TASK[1]}.folder: own/{OWN_TASK[0]})")
    assert not (cwd / f"resources/data/demo/{OWN_TASK[0]}").exists()  # prepared from the folder, not generated
    for name in ("table2.tex", "table2_vs_paper.tex", "table3.tex", "table4.tex", "tsvc.tex"):
        assert "\\toprule" in (cwd / "results/tables" / name).read_text()
    figs = ("batched", "accuracy_vs_cost", *(f"{fig}_{bench}" for bench in CI_BENCHMARKS for fig in (
        "radar", "per_layer_tiny", "confusion_tiny", "selection_sizes_tiny", "textspan_tiny")))
    for fig in figs:
        assert (cwd / "figures" / f"{fig}.pdf").stat().st_size > 1000
        assert (cwd / "figures" / f"{fig}.png").stat().st_size > 1000
    per_task = pd.read_csv(cwd / "results/tables/per_task.csv", dtype={"benchmark": str})
    assert set(per_task.method) >= {"zeroshot", "finetuned", "tsvm", "task_arithmetic", "mass_proj", "mass_nn",
                                    "smile", "wemoe"}
    assert per_task.accuracy.between(0, 1).all()
    # routed methods: scored as the editions' code scores (a wrong head can hit by index) and strictly
    assert (per_task.accuracy >= per_task.strict_accuracy).all()
    routed = per_task.method.str.startswith("mass_") | per_task.method.isin(["smile", "wemoe"])
    assert (per_task.accuracy[~routed] == per_task.strict_accuracy[~routed]).all()
    assert per_task.routing_accuracy[per_task.method.isin(["smile", "wemoe"])].between(0, 1).all()
    # Table 4: the split sizes as prepared (the demo's generated 32 px images)
    table4 = pd.read_csv(cwd / "results/tables/table4.csv").set_index("task")
    for task in table4.index:
        assert table4.loc[task, "test"] == len(np.load(cwd / f"resources/data/demo/{task}/test_labels.npy"))
        assert table4.loc[task, "image size"] == "32×32" and pd.isna(table4.loc[task, "published test"])
    # the demo edition publishes nothing: the provenance check ran and says so for every task
    provenance = pd.read_csv(cwd / "results/tables/endpoints_vs_published.csv")
    assert set(provenance.task) == {t for ts in CI_BENCHMARKS.values() for t in ts}
    assert set(provenance.verdict) == {"not published"}
    # nothing left to do, and no temporary files left behind
    again = snakemake("-n", "--cores", "2", *configs, cwd=cwd)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert not list(cwd.rglob("*.part"))
    # the tables summarise the per-task results; every choice made on validation is recorded
    assert_tables_summarise(cwd / "results/tables/per_task.csv", cwd / "results/tables")
    for bench in CI_BENCHMARKS:
        methods = cwd / f"results/tiny/{bench}/methods"
        rows = per_task[per_task.benchmark == bench].set_index(["method", "task"])
        for method in ("tsvc", "tsvc_size"):  # TSV-C's per-task numbers reach per_task.csv unchanged
            result = json.loads((methods / f"{method}.json").read_text())
            assert list(result["test"]) == CI_BENCHMARKS[bench]
            for task, acc in result["test"].items():
                assert rows.loc[(method, task), "accuracy"] == acc
                assert rows.loc[(method, task), "size_fraction"] == result["size_fraction"][task]
        routing = dict(np.load(methods / "mass_proj_routing.npz"))
        check_routing_figures(cwd / "figures", f"tiny_{bench}", routing,
                              json.loads((methods / "mass_proj.json").read_text()))
        # TEXTSPAN: every task decoded at the routing layer chosen on validation and at the early block
        picks = pd.read_csv(cwd / f"results/tiny/{bench}/textspan.csv")
        chosen_layer = json.loads((methods / "mass_proj.json").read_text())["hyperparameters"]["layer"]
        assert set(picks[picks.role == "routing"].layer) == {chosen_layer}
        assert set(picks[picks.role == "early"].block) == {1}
        assert set(picks.task) == set(CI_BENCHMARKS[bench]) and picks.explained.between(0, 1).all()
        assert (picks.groupby(["task", "role"]).explained.sum() <= 1 + 1e-6).all()
        shown = pd.read_csv(cwd / f"figures/textspan_tiny_{bench}.csv")
        pd.testing.assert_frame_equal(shown, picks)
        # accuracy against cost: every method of Table 2 with Table 2's accuracy; measured where it is not the
        # plain forward's network; the endpoints keep one encoder per task
        cost = pd.read_csv(cwd / "results/tables/accuracy_vs_cost.csv", dtype={"benchmark": str})
        cost = cost[cost.benchmark == bench].set_index("method")
        assert set(cost.index) == {TABLE2_ROWS[m] for m in set(per_task.method) if m in TABLE2_ROWS}
        for method, label in TABLE2_ROWS.items():
            mean = 100 * rows.loc[method].normalized.mean()
            assert cost.loc[label, "normalized"] == pytest.approx(mean)
        measured = cost[cost.basis == "measured"]
        assert set(measured.index) == {TABLE2_ROWS[m] for m in ("mass_proj", "smile", "wemoe")}
        assert (measured.time_over_forward > 0).all() and (measured.macs_over_forward > 1).all()
        assert cost.loc["Fine-tuned", "storage"] == len(CI_BENCHMARKS[bench])
        assert (measured.storage > 1).all() and (cost.drop(measured.index).macs_over_forward == 1).all()
        mass_cost = json.loads((cwd / f"results/tiny/{bench}/cost.json").read_text())["methods"]["mass_proj"]
        assert mass_cost["macs_over_forward"] >= mass_cost["floor_macs_over_forward"] > 1
    chosen = json.loads((cwd / "results/tables/selected_hyperparameters.json").read_text())["tiny"]
    for bench in CI_BENCHMARKS:
        assert chosen[bench]["epsilon"]["selected_on"] == "val"
        assert {"layer", "eta"} <= set(chosen[bench]["mass_proj"]) and "alpha" in chosen[bench]["task_arithmetic"]
        assert set(chosen[bench]["consensus"]["lambdas"]) == set(CI_BENCHMARKS[bench])
    # the report holds every table, figure and data file, each with its caption
    report = snakemake("--report", "report.html", *configs, cwd=cwd)
    assert report.returncode == 0, report.stderr[-4000:]
    html = (cwd / "report.html").read_text()
    items = [f"{t}.{ext}" for t in ("table2", "table2_vs_paper", "table3") for ext in ("tex", "csv")]
    items += [f"{t}.{ext}" for t in ("tsvc", "endpoints_vs_published", "table4", "accuracy_vs_cost")
              for ext in ("tex", "csv")]
    items += [f"{f}.{ext}" for f in figs for ext in ("pdf", "png")]
    for item in [*items, "per_task.csv", "selected_hyperparameters.json", "backbones tiny"]:
        assert item in html, item
    for caption in (ROOT / "workflow/report").glob("*.rst"):
        if caption.name != "workflow.rst":
            assert caption.read_text().splitlines()[0][:60] in html, caption.name
