"""Dress rehearsal: the paper configuration end to end against a hub on 127.0.0.1.

``snakemake`` runs config.yaml (with tests/workflow/rehearsal/rehearsal.yaml: sizes, grids and threads
only) for the real ViT-B-32 at 224 px, with ``HF_ENDPOINT`` (and ``MASS_GITHUB_RAW``) pointing at a
``support.hub.HubServer`` filled by ``support.hub_files.fill_hub`` from the per-source fixtures: every
dataset repository in its real layout and schema, nik-dim/tall_masks' checkpoints and pickled heads,
open_clip's OpenAI weights. Then the fetch rules of ViT-B-16 and ViT-L-14 (for MNIST), the lock
file's pins, the tables, and a second run that plans nothing. The server must never have answered
an error.

Two sizes:
* in ``make test``: every rule of the paper DAG on the 8-task benchmark, and for the 20-task benchmark
  every per-task rule of its 12 other tasks (download, prepare with EMNIST's orientation check,
  fetch or EMNIST's re-fine-tuning, published and text-built heads and their check, the shared
  CIFAR10/STL10 head, zero-shot and fine-tuned accuracy) plus a plan of its whole DAG. What it leaves
  out of the 20-task run, the SVD caches of those 12 tasks and the benchmark-level rules, is the code
  the 8-task run exercises, on 20 instead of 8 inputs.
* ``make rehearsal`` (``MASS_REHEARSAL=full``): every rule on both benchmarks (218 jobs).

What it cannot show: the real network (speed, outages, moved files), the real data volumes (a few
images per split), GPU behaviour and the numbers of the paper (random weights). Cost on the 2-core
machine: see docs/running.md ("Before you spend GPU hours"). ``MASS_REHEARSAL_KEEP=1`` keeps the
~20 GB of files it writes (default: deleted, the logs kept).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from support.hub import HubServer
from support.hub_files import fill_hub
from support.workflow import ROOT, planned_jobs, snakemake, workflow_copy

from mass.data import catalog

HERE = Path(__file__).resolve().parent

FULL = os.environ.get("MASS_REHEARSAL") == "full"
pytestmark = [pytest.mark.slow]
# make test: the paper DAG on 8 tasks (eight_tasks.yaml), then the 20-task benchmark's other tasks
OVERLAY = ("--configfile", "rehearsal.yaml") if FULL else ("--configfile", "rehearsal.yaml", "eight_tasks.yaml")
BOTH = ("--configfile", "rehearsal.yaml")
OTHERS = {"ViT-B-16": "MNIST", "ViT-L-14": "MNIST"}
PAPER_CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
EXTRA_TASKS = [t for t in PAPER_CONFIG["benchmarks"]["20"] if t not in PAPER_CONFIG["benchmarks"]["8"]]


def extra_task_targets(backbone: str = "ViT-B-32") -> list[str]:
    """Every per-task output of the 20-task benchmark's tasks that the 8-task run does not make."""
    return [*(f"results/{backbone}/tasks/{t}/{name}.json" for t in EXTRA_TASKS for name in ("head_check", "endpoints")),
            f"resources/checkpoints/{backbone}/heads/CIFAR10_STL10.safetensors"]


def job_counts(result) -> dict[str, int]:
    """Snakemake's "Job stats" table of a run: jobs per rule."""
    table = result.stderr.split("Job stats:")[1].split("\n\n")[0] if "Job stats:" in result.stderr else ""
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def log_tail(cwd: Path, limit: int = 6000) -> str:
    """The logs of the jobs that failed (Snakemake names them in its output)."""
    logs = sorted((cwd / "results" / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    return "\n".join(f"--- {p.relative_to(cwd)}\n{p.read_text(errors='replace')[-1500:]}" for p in logs[-3:])[-limit:]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rehearsal")
    arch = {name: b["arch"] for name, b in PAPER_CONFIG["backbones"].items()}
    started = time.monotonic()
    server = HubServer().start()
    summary = fill_hub(server, tmp / "hub", tasks=list(catalog.TASKS),
                       backbones={"ViT-B-32": (arch["ViT-B-32"], list(catalog.TASKS)),
                                  **{b: (arch[b], [task]) for b, task in OTHERS.items()}},
                       descriptions_at=PAPER_CONFIG["textspan"]["descriptions"])
    generated = time.monotonic() - started
    cwd = workflow_copy(tmp / "workflow")
    for name in ("rehearsal.yaml", "eight_tasks.yaml", "other_backbones.yaml"):
        shutil.copy(HERE / name, cwd / name)
    env = {"HF_ENDPOINT": server.url, "MASS_GITHUB_RAW": server.url, "HF_HOME": str(tmp / "hf_home"),
           "HF_HUB_OFFLINE": "0", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                               os.environ.get("PYTHONPATH")]))}
    state = {"cwd": cwd, "server": server, "summary": summary, "env": env, "times": {"generate hub": generated}}
    yield state
    server.stop()
    print("\nrehearsal times (s):", json.dumps({k: round(v) for k, v in state["times"].items()}))
    print("facts not from a fixture (catalog or convention):", json.dumps(summary["assumed"], indent=1))
    if not os.environ.get("MASS_REHEARSAL_KEEP"):  # ~20 GB of checkpoints; the logs stay for a look
        shutil.rmtree(tmp / "hub", ignore_errors=True)
        shutil.rmtree(cwd / "resources", ignore_errors=True)
        for path in (cwd / "results").rglob("*.safetensors"):
            path.unlink()


def run(state: dict, *args: str, name: str, timeout: int = 1500):
    started = time.monotonic()
    result = snakemake(*args, cwd=state["cwd"], timeout=timeout, extra_env=state["env"])
    state["times"][name] = time.monotonic() - started
    return result


@pytest.fixture(scope="module")
def paper_run(rehearsal):
    name = "paper DAG, ViT-B-32, " + ("8 + 20" if FULL else "8") + " tasks"
    runs = [run(rehearsal, "--cores", "2", *OVERLAY, name=name)]
    if not FULL and runs[0].returncode == 0:
        runs.append(run(rehearsal, *extra_task_targets(), "--cores", "2", *BOTH,
                        name=f"20-task benchmark: per-task rules of its {len(EXTRA_TASKS)} other tasks"))
    return rehearsal, runs


def test_paper_dag_runs_on_the_real_layouts(paper_run):
    state, runs = paper_run
    cwd = state["cwd"]
    for result in runs:
        assert result.returncode == 0, result.stderr[-5000:] + log_tail(cwd)
    assert state["server"].misses() == [], "the pipeline asked the hub for what it does not have"
    for table in ("table2.tex", "table2_vs_paper.tex", "table3.tex"):
        assert (cwd / "results" / "tables" / table).stat().st_size > 0
    jobs = set().union(*(job_counts(r) for r in runs))
    rules = {"download_dataset", "prepare_dataset", "prepare_train_split", "fetch_pretrained", "fetch_finetuned",
             "check_head", "download_descriptions", "build_head", "build_head_for_check", "use_published_head",
             "finetune", "evaluate_endpoints", "svd_cache", "merge", "select_epsilon", "first_pass",
             "routing_sweep", "routing_features", "evaluate_mass", "evaluate_tsvm", "evaluate_tsvc",
             "evaluate_batched", "evaluate_baseline", "interpret_tsv", "collect_results", "make_tables",
             "make_plots", "all"}
    assert rules <= jobs, f"rules of the paper DAG that did not run: {sorted(rules - jobs)}"
    for task in EXTRA_TASKS:
        check = json.loads((cwd / "results" / "ViT-B-32" / "tasks" / task / "head_check.json").read_text())
        assert check["task"] == task


def test_twenty_task_dag_is_planned_whole(paper_run):
    """The 20-task benchmark's benchmark-level rules, on what is now on disk: planned, and every
    benchmark rule among them (make test runs them on 8 tasks only)."""
    state, runs = paper_run
    assert all(r.returncode == 0 for r in runs)
    plan = run(state, "-n", "--cores", "2", *BOTH, name="plan of the paper DAG, 8 + 20 tasks", timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = {job["rule"] for job in planned_jobs(plan.stdout + plan.stderr)}
    if not FULL:
        assert {"svd_cache", "merge", "first_pass", "evaluate_mass", "evaluate_baseline", "make_tables"} <= planned


def test_lock_file_pins_every_source(paper_run):
    state, runs = paper_run
    assert all(r.returncode == 0 for r in runs)
    lock = json.loads((state["cwd"] / "workflow" / "sources.lock.json").read_text())
    pinned = set(lock["revisions"])
    for info in state["summary"]["datasets"].values():
        assert f"{info['repo']}@{info['ref']}" in pinned
    assert {"nik-dim/tall_masks@main", "timm/vit_base_patch32_clip_224.openai@main"} <= pinned
    for entry in lock["revisions"].values():
        assert len(entry["commit"]) == 40 and entry["files"]
    keys = list(lock["files"])
    assert any(k.startswith("github://") for k in keys)
    assert sum(k.endswith(".parquet") for k in keys) >= 40
    assert sum("nonlinear_finetuned.pt" in k for k in keys) == len(catalog.TASKS) - 1  # EMNIST fine-tuned here
    assert all(len(record["sha256"]) == 64 for record in lock["files"].values())


def test_other_backbones_fetch_paths(paper_run):
    state, runs = paper_run
    assert all(r.returncode == 0 for r in runs)
    targets = [f for b, task in OTHERS.items() for f in (f"resources/checkpoints/{b}/hub/{task}.safetensors",
                                                        f"results/{b}/tasks/{task}/head_check.json")]
    result = run(state, *targets, "--cores", "2", "--configfile", "rehearsal.yaml", "other_backbones.yaml",
                 name="ViT-B-16 + ViT-L-14 fetch rules")
    assert result.returncode == 0, result.stderr[-5000:] + log_tail(state["cwd"])
    assert state["server"].misses() == []
    for backbone in OTHERS:
        report = json.loads((state["cwd"] / "results" / backbone / "theta_pre.json").read_text())
        assert "nonlinear_zeroshot.pt" in report["theta_pre"]


def test_second_run_plans_nothing(paper_run):
    state, runs = paper_run
    assert all(r.returncode == 0 for r in runs)
    again = [run(state, "-n", "--cores", "2", *OVERLAY, name="second run (dry)", timeout=300)]
    if not FULL:
        again.append(run(state, *extra_task_targets(), "-n", "--cores", "2", *BOTH, name="second run of the 20-task "
                         "targets (dry)", timeout=300))
    for result in again:
        assert result.returncode == 0, result.stderr[-3000:]
        assert planned_jobs(result.stdout + result.stderr) == [], (result.stdout + result.stderr)[-3000:]
