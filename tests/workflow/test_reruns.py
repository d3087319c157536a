"""Incremental reruns: after a finished run, an edited config plans exactly the jobs the edit affects
(Snakemake's default rerun triggers: every hyperparameter reaches its rules as a scalar param), and a
job killed mid-write leaves nothing that passes for its output."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from support.workflow import AGGREGATES, BACKBONE_GATHERS, SMALL, dry_run, env, planned_jobs, snakemake

from mass_pipeline.methods import BASELINES

pytestmark = pytest.mark.slow

# interpret_tsv decodes at the routing layer that evaluate_mass records, and measure_cost times MASS with the
# selections it made, so both follow evaluate_mass
ROUTING = {"evaluate_mass", "evaluate_batched", "interpret_tsv", "measure_cost"} | AGGREGATES
MERGE = {"merge", "first_pass", "routing_sweep", "select_epsilon"} | ROUTING


def plan(cwd, tmp_path, overrides: dict) -> list[dict[str, str]]:
    """The jobs a dry run plans with ``overrides`` layered over the small demo's config."""
    extra = tmp_path / "override.yaml"
    extra.write_text(yaml.safe_dump(overrides))
    return dry_run(cwd, str(extra))


def rules(jobs) -> set[str]:
    return {job["rule"] for job in jobs}


def test_finished_run_plans_nothing(small_demo):
    assert dry_run(small_demo) == []


@pytest.mark.parametrize("overrides", [{"routing": {"eta": 0.35}}, {"routing": {"top_k": 1}}],
                         ids=["eta", "top_k"])
def test_routing_change_reruns_only_routing_and_what_follows(small_demo, tmp_path, overrides):
    # not the SVD cache, the TSV-M merge, the first passes, the sweeps or the baselines
    assert rules(plan(small_demo, tmp_path, overrides)) == ROUTING


def test_epsilon_change_reruns_the_merge_and_downstream_only(small_demo, tmp_path):
    jobs = plan(small_demo, tmp_path, {"merge": {"epsilon_grid": [0.5]}})
    assert rules(jobs) == MERGE  # no SVD cache, data, checkpoints, TSV-M (epsilon none) or baselines
    merges = {job["wildcards"] for job in jobs if job["rule"] == "merge"}
    assert merges == {"backbone=tiny, bench=2, merge=eps0.5"}
    first_passes = {job["output"] for job in jobs if job["rule"] == "first_pass"}
    assert first_passes == {f"results/tiny/2/first_pass/{m}.npz" for m in ("eps0.5_val", "selected_val",
                                                                            "selected_test")}


def test_storage_dtype_change_reruns_the_svd_cache_not_the_checkpoints(small_demo, tmp_path):
    found = rules(plan(small_demo, tmp_path, {"svd": {"storage_dtype": "bfloat16"}}))
    assert {"svd_cache", "merge", "evaluate_mass"} <= found
    assert not found & {"pretrain_demo_clip", "generate_demo_task", "finetune", "build_head", "evaluate_endpoints"}


@pytest.mark.parametrize("overrides", [{"plots": {"dpi": 72}}, {"plots": {"style": "ticks"}}], ids=["dpi", "style"])
def test_plot_option_reruns_only_plots(small_demo, tmp_path, overrides):
    drawn = {"make_plots", "accuracy_vs_cost"} if "dpi" in overrides["plots"] else {"make_plots"}
    assert rules(plan(small_demo, tmp_path, overrides)) == drawn | {"all"}


def test_provenance_tolerance_reruns_only_the_check_and_the_tables(small_demo, tmp_path):
    """The SVD cache reads the check as ancient: a rewritten check does not redo a merge."""
    assert rules(plan(small_demo, tmp_path, {"provenance": {"tolerance": 2.5}})) == {"check_provenance", "make_tables",
                                                                                      "all"}


def test_new_backbone_runs_only_its_jobs(small_demo, tmp_path):
    overrides = {"run": {"backbones": ["tiny", "tiny2"]},
                 "backbones": {"tiny2": {"arch": "mass-tiny-vit", "pretrained": "demo", "candidate_blocks": [2, 5]}}}
    jobs = plan(small_demo, tmp_path, overrides)
    assert {"pretrain_demo_clip", "svd_cache", "merge", "evaluate_mass"} <= rules(jobs)
    assert all("backbone=tiny2" in job["wildcards"] for job in jobs if job["rule"] not in AGGREGATES), jobs


def test_new_benchmark_runs_only_its_jobs(small_demo, tmp_path):
    overrides = {"run": {"benchmarks": ["2", "3"]}, "benchmarks": {"3": ["digits", "gratings", "counting"]}}
    jobs = plan(small_demo, tmp_path, overrides)
    new = [job for job in jobs if job["rule"] not in AGGREGATES | BACKBONE_GATHERS]
    assert {"generate_demo_task", "svd_cache", "merge", "evaluate_mass"} <= rules(new)
    assert "check_provenance" in rules(jobs)  # the new task's endpoints are checked too
    # per-task jobs only for the new task, benchmark jobs only for the new benchmark
    assert all("task=counting" in job["wildcards"] or "bench=3" in job["wildcards"] for job in new), new


def test_memory_requests_follow_what_the_job_holds(small_demo, tmp_path):
    """Benchmark-level jobs hold their encoders, SVD components and first passes: their mem_mb is 3 GB
    plus twice those inputs (common.smk), so a local --resources mem_mb limit keeps apart jobs that do
    not fit together. evaluate_baseline reads its task vectors from their files a layer or a task at a
    time: 3 GB plus its method's ``memory_copies`` times one encoder, whatever T."""
    extra = tmp_path / "consensus.yaml"
    extra.write_text(yaml.safe_dump({"baselines": {"methods": ["task_arithmetic", "consensus"]}}))
    run = snakemake("-n", "--cores", "2", "--forcerun", "evaluate_baseline", "evaluate_mass", *SMALL, str(extra),
                    cwd=small_demo, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    asked, held_mb, encoder_mb = {}, {}, {}
    for job in planned_jobs(run.stdout + run.stderr):
        if job["rule"] not in ("evaluate_baseline", "evaluate_mass"):
            continue
        name = job["wildcards"].split("method=")[1] if job["rule"] == "evaluate_baseline" else job["rule"]
        held = [f for f in job["input"].split(", ") if f.endswith((".safetensors", ".npz"))]
        held_mb[name] = sum(os.path.getsize(small_demo / f) for f in held) / 2**20
        encoder_mb[name] = max(os.path.getsize(small_demo / f) for f in held if "/trained/" in f or "/hub/" in f
                               ) / 2**20 if job["rule"] == "evaluate_baseline" else None
        asked[name] = int(re.search(r"\bmem_mb=(\d+)", job["resources"]).group(1))
    assert set(asked) == {"task_arithmetic", "consensus", "evaluate_mass"}, asked
    assert encoder_mb["task_arithmetic"] == encoder_mb["consensus"] > 0
    assert asked["task_arithmetic"] == int(3000 + BASELINES["task_arithmetic"].memory_copies
                                           * encoder_mb["task_arithmetic"])
    assert asked["consensus"] == int(3000 + BASELINES["consensus"].memory_copies * encoder_mb["consensus"])
    assert asked["evaluate_mass"] == int(3000 + 2 * held_mb["evaluate_mass"])


HANG_BEFORE_RENAME = """\
import os, time
_target, _replace = os.environ["MASS_TEST_HANG_ON"], os.replace

def _replace_after_a_while(src, dst, *args, **kwargs):
    if str(dst).endswith(_target):  # the data is in the temporary file; the rename has not happened
        open(os.environ["MASS_TEST_READY"], "w").close()
        time.sleep(600)
    return _replace(src, dst, *args, **kwargs)

os.replace = _replace_after_a_while
"""


def test_job_killed_mid_write_leaves_no_output(small_demo, tmp_path):
    """SIGKILL Snakemake and its job between writing an output and renaming it into place (held there
    by a sitecustomize hook): the target must not exist and the next run must plan the job again."""
    cwd = tmp_path / "run"
    shutil.copytree(small_demo, cwd, symlinks=True)
    target = cwd / "results/tiny/svd/digits.safetensors"
    target.unlink()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_BEFORE_RENAME)
    ready = tmp_path / "ready"
    job_env = {**env(), "PYTHONPATH": str(hook), "MASS_TEST_HANG_ON": "svd/digits.safetensors",
               "MASS_TEST_READY": str(ready)}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", str(target.relative_to(cwd)), "--cores", "2", *SMALL],
                            cwd=cwd, env=job_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists(), "the svd_cache job never reached its rename"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, no chance to clean up
        proc.wait()

    assert not target.exists()
    leftovers = list(target.parent.glob(".digits.safetensors.*.part"))
    assert leftovers and leftovers[0].stat().st_size > 0  # killed with the data written, not renamed
    # the killed Snakemake left its lock: unlock as after any crash, then plan
    assert snakemake("--unlock", *SMALL, cwd=cwd, timeout=120).returncode == 0
    again = dry_run(cwd, targets=(str(target.relative_to(cwd)),))
    assert [(job["rule"], job["wildcards"]) for job in again] == [("svd_cache", "backbone=tiny, task=digits")]
    assert "Missing output files" in again[0]["reason"]
