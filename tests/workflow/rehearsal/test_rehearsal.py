"""Dress rehearsal: the paper configuration end to end against a hub on 127.0.0.1.

``snakemake`` runs config.yaml (with tests/workflow/rehearsal/rehearsal.yaml: sizes, grids and threads
only) for the real ViT-B-32 at 224 px, with ``HF_ENDPOINT`` (and ``MASS_GITHUB_RAW``) pointing at a
``support.hub.HubServer`` filled by ``support.hub_files.fill_hub`` from the per-source fixtures: every
dataset repository in its real layout and schema, nik-dim/tall_masks' checkpoints and pickled heads,
open_clip's OpenAI weights. Then the fetch rules of ViT-B-16 and ViT-L-14 (for MNIST), the lock
file's pins, the tables, and a second run that plans nothing. The server must never have answered
an error.

Two sizes:
* in ``make test``: MASS from the sources on (every per-task rule, the SVD cache, the merge, the first
  passes, the epsilon and routing choices, MASS's evaluation) on four of the catalog's tasks
  (four_tasks.yaml: MNIST, EMNIST, CIFAR10, STL10), which bring EMNIST's re-fine-tuning and orientation
  check, fetched encoders and published heads and their check, STL10 / CIFAR10 sharing a head, the
  MNIST / EMNIST overlap in routing and the second pass. The 8- and 20-task benchmarks are then planned
  whole; every task's source goes through fetch and preparation in test_hub_files.py, and every other
  rule runs on the demo's tiny model (tests/workflow/test_pipeline.py).
* ``make rehearsal`` (``MASS_REHEARSAL=full``): every rule on both benchmarks (218 jobs), and the
  baselines at T = 20.

Then the final edition (workflow/presets/final.yaml, with final_eight.yaml) in a working directory of its
own, against the same hub, which then also serves the ``crisostomi`` encoders (its sources and theta_pre,
text-built heads with its class spaces, its task order, fixed routing, the provenance check against its
published accuracies): in ``make test`` MASS on three of its 8 tasks (final_three.yaml), in ``make
rehearsal`` the methods its Table 2 publishes on the 8 whole, where its Table 2 records are compared (and in
tests/steps/test_tables.py on hand-written results).

What it cannot show: the real network (speed, outages, moved files), the real data volumes (a few
images per split), GPU behaviour and the numbers of the paper (random weights). Cost on the 2-core
machine: see docs/running.md ("Before you spend GPU hours"). Disk: 16.8 GB at the peak, since the hub
deletes each encoder checkpoint after its download (``serve_once``). ``MASS_REHEARSAL_KEEP=1`` keeps
the files it writes (default: deleted, the logs kept). Snakemake gets the machine's memory as its
``mem_mb`` limit, as docs/running.md tells users to do on one machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.hub import HubServer
from support.hub_files import commit_of, crisostomi_files, fill_hub
from support.workflow import ROOT, planned_jobs, snakemake, workflow_copy

from mass_pipeline.data import catalog
from mass_pipeline.results import MethodResult

HERE = Path(__file__).resolve().parent

FULL = os.environ.get("MASS_REHEARSAL") == "full"
pytestmark = [pytest.mark.slow]
# make test: the paper DAG on four tasks (four_tasks.yaml); make rehearsal: both benchmarks
BOTH = ("--configfile", "rehearsal.yaml")
OVERLAY = BOTH if FULL else ("--configfile", "rehearsal.yaml", "four_tasks.yaml")
OTHERS = {"ViT-B-16": "MNIST", "ViT-L-14": "MNIST"}
DISK_GB = 20  # measured peak of make test's rehearsal (docs/running.md), with a margin
# Snakemake limits memory only when told (docs/running.md): two 20-task baselines at once were OOM-killed
MACHINE_MB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
PAPER_CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
# the benchmarks the paper run runs, and every task they hold
PAPER_BENCHMARKS = (PAPER_CONFIG["benchmarks"] if FULL else
                    yaml.safe_load((HERE / "four_tasks.yaml").read_text())["benchmarks"])
PAPER_TASKS = list(dict.fromkeys(t for tasks in PAPER_BENCHMARKS.values() for t in tasks))
FINAL = yaml.safe_load((ROOT / "workflow" / "presets" / "final.yaml").read_text())
FINAL_OVERLAYS = ("rehearsal.yaml", "final_eight.yaml") + (() if FULL else ("final_three.yaml",))
FINAL_BENCHMARK, FINAL_TASKS = (("8", FINAL["benchmarks"]["8"]) if FULL else next(iter(
    yaml.safe_load((HERE / "final_three.yaml").read_text())["benchmarks"].items())))
BENCHMARK_RULES = {"svd_cache", "merge", "first_pass", "routing_sweep", "evaluate_mass", "evaluate_baseline",
                   "evaluate_smile", "evaluate_wemoe", "measure_cost", "make_tables", "accuracy_vs_cost"}
# make test's targets: MASS (projection router) of each benchmark run, and the head checks
MASS_RULES = {"svd_cache", "merge", "first_pass", "routing_sweep", "select_epsilon", "evaluate_mass"}


def targets(benchmarks, backbone: str = "ViT-B-32", head_checks: bool = True) -> tuple[str, ...]:
    """What a rehearsal run asks for: everything (make rehearsal), or MASS, the head checks and TEXTSPAN's
    description pool, downloaded through MASS_GITHUB_RAW (make test)."""
    if FULL:
        return ()
    checks = [f"results/{backbone}/tasks/{t}/head_check.json" for ts in benchmarks.values() for t in ts]
    return (*(f"results/{backbone}/{b}/methods/mass_proj.json" for b in benchmarks),
            *(checks + ["resources/descriptions/hub.txt"] if head_checks else ()))


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
    free = shutil.disk_usage(tmp).free
    if free < DISK_GB * 1e9:
        pytest.fail(f"the dress rehearsal writes up to ~{DISK_GB} GB under {tmp} and only {free / 1e9:.0f} GB are free "
                    "there: free space on that disk, or give pytest a bigger one with --basetemp DIR")
    arch = {name: b["arch"] for name, b in PAPER_CONFIG["backbones"].items()}
    started = time.monotonic()
    server = HubServer().start()
    datasets = (list(catalog.BENCHMARKS[20]) if FULL
                else list(dict.fromkeys(PAPER_TASKS + FINAL_TASKS + list(OTHERS.values()))))
    summary = fill_hub(server, tmp / "hub", tasks=datasets,
                       backbones={"ViT-B-32": (arch["ViT-B-32"], PAPER_TASKS),
                                  **{b: (arch[b], [task]) for b, task in OTHERS.items()}},
                       descriptions_at=PAPER_CONFIG["textspan"]["descriptions"], serve_once=True)
    generated = time.monotonic() - started
    cwd = workflow_copy(tmp / "workflow")
    for name in ("rehearsal.yaml", "four_tasks.yaml", "other_backbones.yaml"):
        shutil.copy(HERE / name, cwd / name)
    env = {"HF_ENDPOINT": server.url, "MASS_GITHUB_RAW": server.url, "HF_HOME": str(tmp / "hf_home"),
           "HF_HUB_OFFLINE": "0", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                               os.environ.get("PYTHONPATH")]))}
    state = {"cwd": cwd, "server": server, "summary": summary, "env": env, "times": {"generate hub": generated}}
    yield state
    server.stop()
    print("\nrehearsal times (s):", json.dumps({k: round(v) for k, v in state["times"].items()}))
    print("facts not from a fixture (catalog or convention):", json.dumps(summary["assumed"], indent=1))
    if not os.environ.get("MASS_REHEARSAL_KEEP"):  # the checkpoints; the logs stay for a look
        shutil.rmtree(tmp / "hub", ignore_errors=True)
        shutil.rmtree(cwd / "resources", ignore_errors=True)
        for path in (cwd / "results").rglob("*.safetensors"):
            path.unlink()


def run(state: dict, *args: str, name: str, measured: float, timeout: int = 1500):
    """One Snakemake run of the rehearsal, timed; ``measured``: its time alone on the quiet 2-core machine
    (docs/running.md), named if the run reaches ``timeout``."""
    started = time.monotonic()
    result = snakemake(*args, cwd=state["cwd"], timeout=timeout, extra_env=state["env"], measured=measured)
    state["times"][name] = time.monotonic() - started
    return result


@pytest.fixture(scope="module")
def paper_run(rehearsal):
    name = "paper DAG, ViT-B-32, " + ("8 + 20" if FULL else "4") + " tasks"
    # measured: 7 min 36 s (make test's MASS on 4 tasks, 2026-12-07, the machine partly busy), 22 min 10 s (both
    # benchmarks whole, 2026-11-29); the limit allows a busy machine
    return rehearsal, run(rehearsal, *targets(PAPER_BENCHMARKS), "--cores", "2", "--resources", f"mem_mb={MACHINE_MB}",
                          *OVERLAY, name=name,
                          measured=1330 if FULL else 456, timeout=4000 if FULL else 2400)


def test_paper_dag_runs_on_the_real_layouts(paper_run):
    state, result = paper_run
    cwd = state["cwd"]
    assert result.returncode == 0, result.stderr[-5000:] + log_tail(cwd)
    assert state["server"].misses() == [], "the pipeline asked the hub for what it does not have"
    rules = {"download_dataset", "prepare_dataset", "prepare_train_split", "fetch_pretrained", "fetch_finetuned",
             "check_head", "build_head", "build_head_for_check", "use_published_head", "finetune",
             "evaluate_endpoints", "check_provenance", "download_descriptions", *MASS_RULES}
    if FULL:
        for table in ("table2.tex", "table2_vs_paper.tex", "table3.tex"):
            assert (cwd / "results" / "tables" / table).stat().st_size > 0
        rules |= {"routing_features", "evaluate_tsvm", "evaluate_tsvc", "evaluate_batched",
                  "interpret_tsv", "collect_results", "make_plots", "all", *BENCHMARK_RULES}
    jobs = job_counts(result)
    assert rules <= set(jobs), f"rules of the paper DAG that did not run: {sorted(rules - set(jobs))}"
    assert jobs["evaluate_endpoints"] == len(PAPER_TASKS)
    for task in PAPER_TASKS:
        check = json.loads((cwd / "results" / "ViT-B-32" / "tasks" / task / "head_check.json").read_text())
        assert check["task"] == task
    for benchmark, tasks in PAPER_BENCHMARKS.items():
        mass = MethodResult.load(cwd / "results" / "ViT-B-32" / benchmark / "methods" / "mass_proj.json")
        assert list(mass.test) == tasks


def test_both_benchmarks_are_planned_whole(paper_run):
    """What is on disk now plans every job of the paper's two benchmarks but the per-task ones of the tasks
    that ran (make test's four), and nothing in make rehearsal, which ran both."""
    state, result = paper_run
    assert result.returncode == 0
    plan = run(state, "-n", "--cores", "2", *BOTH, name="plan of the paper DAG, 8 + 20 tasks", measured=10,
               timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = planned_jobs(plan.stdout + plan.stderr)
    if FULL:
        assert planned == []
    else:
        assert BENCHMARK_RULES <= {job["rule"] for job in planned}
        planned_tasks = {w[5:] for job in planned for w in job.get("wildcards", "").split(", ")
                         if w.startswith("task=")}
        assert not planned_tasks & set(PAPER_TASKS), planned
        assert planned_tasks >= set(catalog.BENCHMARKS[20]) - set(PAPER_TASKS)


def test_lock_file_pins_every_source(paper_run):
    state, result = paper_run
    assert result.returncode == 0
    lock = json.loads((state["cwd"] / "workflow" / "sources.lock.json").read_text())
    pinned = set(lock["revisions"])
    for task in PAPER_TASKS:
        info = state["summary"]["datasets"][task]
        assert f"{info['repo']}@{info['ref']}" in pinned
    assert {"nik-dim/tall_masks@main", "timm/vit_base_patch32_clip_224.openai@main"} <= pinned
    for entry in lock["revisions"].values():
        assert len(entry["commit"]) == 40 and entry["files"]
    keys = list(lock["files"])
    assert any(k.startswith("github://") for k in keys)
    assert sum(k.endswith(".parquet") for k in keys) >= 2 * len(PAPER_TASKS)  # a train and a test file each
    assert sum("nonlinear_finetuned.pt" in k for k in keys) == len(PAPER_TASKS) - 1  # EMNIST fine-tuned here
    assert all(len(record["sha256"]) == 64 for record in lock["files"].values())


def test_other_backbones_fetch_paths(paper_run):
    state, result = paper_run
    assert result.returncode == 0
    targets = [f for b, task in OTHERS.items() for f in (f"resources/checkpoints/{b}/hub/{task}.safetensors",
                                                        f"results/{b}/tasks/{task}/head_check.json")]
    result = run(state, *targets, "--cores", "2", "--configfile", "rehearsal.yaml", "other_backbones.yaml",
                 name="ViT-B-16 + ViT-L-14 fetch rules", measured=55)
    assert result.returncode == 0, result.stderr[-5000:] + log_tail(state["cwd"])
    assert state["server"].misses() == []
    for backbone in OTHERS:
        report = json.loads((state["cwd"] / "results" / backbone / "theta_pre.json").read_text())
        assert "nonlinear_zeroshot.pt" in report["theta_pre"]


def test_second_run_plans_nothing(paper_run):
    state, result = paper_run
    assert result.returncode == 0
    again = run(state, *targets(PAPER_BENCHMARKS), "-n", "--cores", "2", *OVERLAY, name="second run (dry)",
                measured=10, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert planned_jobs(again.stdout + again.stderr) == [], (again.stdout + again.stderr)[-3000:]


# --------------------------------------------------------------------------- the final edition

# The rules of the final edition's MASS from its sources on (make test), and in make rehearsal every rule of its
# DAG but the learned routers' (final_eight.yaml keeps the methods the final edition publishes; the others run the
# same rules in the first edition's run above).
FINAL_RULES = MASS_RULES | {"download_dataset", "prepare_dataset", "fetch_pretrained", "fetch_finetuned", "build_head",
                            "evaluate_endpoints", "check_provenance"}
if FULL:
    FINAL_RULES |= BENCHMARK_RULES | {"download_descriptions", "evaluate_tsvm", "evaluate_tsvc", "evaluate_batched",
                                      "interpret_tsv", "collect_results", "make_plots", "all"}
FINAL_TARGETS = targets({FINAL_BENCHMARK: FINAL_TASKS}, head_checks=False)


@pytest.fixture(scope="module")
def final_run(rehearsal):
    """The final edition's benchmark (make test: three of its 8 tasks), in a working directory of its own,
    against the same hub, which now also serves the crisostomi encoders (generated after the first
    edition's run: each is deleted after its download, as the first edition's are)."""
    tasks = FINAL_TASKS
    arch = PAPER_CONFIG["backbones"]["ViT-B-32"]["arch"]
    tmp = rehearsal["cwd"].parent
    for repo, files in crisostomi_files(tmp / "hub" / "final", {"ViT-B-32": (arch, tasks)}).items():
        for name, path in files.items():
            rehearsal["server"].add(repo, name, path, commit=commit_of(repo), once=not name.endswith(".json"))
    cwd = workflow_copy(tmp / "final")
    for name in FINAL_OVERLAYS:
        shutil.copy(HERE / name, cwd / name)
    state = {**rehearsal, "cwd": cwd}
    # measured: 6 min 14 s (make test's MASS on 3 tasks, 2026-12-07, the machine partly busy), 7 min 16 s (8 tasks)
    result = run(state, *FINAL_TARGETS, "--cores", "2", "--resources", f"mem_mb={MACHINE_MB}", "--configfile",
                 "workflow/presets/final.yaml", *FINAL_OVERLAYS, name=f"final edition, ViT-B-32, {len(tasks)} tasks",
                 measured=436 if FULL else 374, timeout=2400)
    yield state, result
    if not os.environ.get("MASS_REHEARSAL_KEEP"):
        shutil.rmtree(cwd / "resources", ignore_errors=True)
        for path in (cwd / "results").rglob("*.safetensors"):
            path.unlink()


def test_final_edition_runs_whole_on_its_sources(final_run):
    state, result = final_run
    cwd = state["cwd"]
    assert result.returncode == 0, result.stderr[-5000:] + log_tail(cwd)
    assert state["server"].misses() == [], "the pipeline asked the hub for what it does not have"
    jobs = job_counts(result)
    assert FINAL_RULES <= set(jobs), f"rules of the final DAG that did not run: {sorted(FINAL_RULES - set(jobs))}"
    assert not {"check_head", "use_published_head", "finetune", "prepare_train_split"} & set(jobs)
    lock = json.loads((cwd / "workflow" / "sources.lock.json").read_text())
    assert {f"crisostomi/ViT-B-32-{t}@main" for t in FINAL_TASKS} | {"crisostomi/ViT-B-32-base@main"} \
        <= set(lock["revisions"])
    theta_pre = json.loads((cwd / "results" / "ViT-B-32" / "theta_pre.json").read_text())
    assert theta_pre["theta_pre"].startswith("crisostomi/ViT-B-32-base/pytorch_model.bin@")
    provenance = pd.read_csv(cwd / "results" / "ViT-B-32" / "provenance.csv")
    assert list(provenance.task) == FINAL_TASKS and set(provenance.edition) == {"final"}
    assert provenance.published.notna().all()  # the edition's accuracies of its encoders, each task's
    resisc = json.loads((cwd / "resources" / "data" / "hub" / "RESISC45" / "info.json").read_text())
    assert resisc["classnames"][:3] == ["airplane", "forest", "airport"]  # the edition's order, not the source's
    mass = MethodResult.load(cwd / "results" / "ViT-B-32" / FINAL_BENCHMARK / "methods" / "mass_proj.json")
    assert list(mass.test) == FINAL_TASKS
    assert (mass.hyperparameters["layer"], mass.hyperparameters["eta"]) == ("10.mlp.in", 0.2)
    if FULL:  # the edition's records of its 8-task row
        vs_paper = (cwd / "results" / "tables" / "table2_vs_paper.csv").read_text()
        assert "en.papernotes.org" in vs_paper and "accs.json" in vs_paper


def test_final_edition_stops_before_any_svd_cache_on_checkpoints_that_are_not_the_editions(final_run):
    """The wrong-checkpoint stop end to end: encoders fetched from the hub in the crisostomi layout, their
    endpoints evaluated, compared with the final edition's published accuracies, and the DAG stopped before
    any SVD cache. The rehearsal's random encoders match no published accuracy; its tolerance of 100 points
    hid that, the default of 1 point stops on it."""
    state, result = final_run
    assert result.returncode == 0, "the final edition's run failed (see the test before)"
    cwd = state["cwd"]
    shutil.rmtree(cwd / "results" / "ViT-B-32" / "svd")
    (cwd / "strict.yaml").write_text("provenance: {tolerance: 1.0}\n")
    stopped = run(state, *FINAL_TARGETS, "--cores", "2", "--configfile", "workflow/presets/final.yaml", *FINAL_OVERLAYS,
                  "strict.yaml", name="final edition, provenance stop", measured=30, timeout=900)
    assert stopped.returncode != 0 and "Error in rule check_provenance" in stopped.stderr, stopped.stderr[-3000:]
    message = (cwd / "results" / "logs" / "check_provenance" / "ViT-B-32.log").read_text()
    assert re.search(r"ViT-B-32 SUN397: fine-tuned test accuracy \d+\.\d\d% measured here, 7\d\.\d\d% published",
                     message), message[-2000:]
    assert "provenance.accept" in message and "accs.json" in message
    assert not (cwd / "results" / "ViT-B-32" / "provenance.csv").exists()
    assert not list((cwd / "results" / "ViT-B-32").glob("svd/*.safetensors")), "an SVD cache was built"
