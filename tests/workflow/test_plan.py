"""The compute plan (workflow/scripts/plan.py) against real runs: every image-forwarding job logs
``images forwarded: N`` last, and the plan must predict each job of the run and each count."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from support.workflow import SMALL, planned_jobs, snakemake, workflow_copy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from plan import FORWARD_KIND, plan, render  # noqa: E402

SMALL_CONFIG = [str(ROOT / "workflow" / "presets" / "demo.yaml"), str(ROOT / "tests" / "slurm_demo.yaml")]
FORWARDED = re.compile(r"^images forwarded: (\d+)$", re.M)
# The search grids the smallest demo leaves out: eta searched (one validation second pass per m <= top_k),
# a learned router (routing_features), Consensus TA's per-task lambdas on each task's own validation split.
GRIDS = """\
routers: [proj, nn]
routing: {eta: auto, eta_trials: 5, top_k: 2}
baselines:
  methods: [task_arithmetic, consensus]
  consensus: {lambdas: [0.2, 0.4], alphas: [0.5]}
"""


def forwarded_per_job(logs: Path) -> dict[str, int]:
    """``<rule>/<wildcards>`` -> the images the job logged, for every rule that forwards images."""
    counts = {}
    for rule in FORWARD_KIND:
        for log in sorted((logs / rule).rglob("*.log")):
            found = FORWARDED.findall(log.read_text())
            assert found, f"{log} does not say how many images it forwarded"
            counts[log.relative_to(logs).with_suffix("").as_posix()] = int(found[-1])
    return counts


def planned_per_job(configfiles: list[str]) -> dict[str, int]:
    return {f"{j['rule']}/{j['wildcards']}": j["images"] for j in plan(configfiles)["jobs"]}


@pytest.mark.slow
def test_plan_predicts_the_images_every_job_of_the_small_demo_forwarded(small_demo):
    actual = forwarded_per_job(small_demo / "results" / "logs")
    assert planned_per_job(SMALL_CONFIG) == actual
    assert {job.split("/")[0] for job in actual} == set(FORWARD_KIND) - {"routing_features"}


@pytest.mark.slow
def test_plan_predicts_the_search_grids_forwards(small_demo, tmp_path):
    """The small demo's finished copy, rerun with the grids it leaves out: only the affected MASS and
    baseline jobs run (a few seconds each); then every log must match the plan of the new config."""
    work = tmp_path / "grids"
    shutil.copytree(small_demo, work, symlinks=True)
    (work / "grids.yaml").write_text(GRIDS)
    targets = [f"results/tiny/2/methods/{m}.json" for m in ("mass_proj", "mass_nn", "consensus")]
    run = snakemake(*targets, "--cores", "2", "--max-threads", "1", *SMALL, "grids.yaml", cwd=work, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    actual = forwarded_per_job(work / "results" / "logs")
    assert planned_per_job([*SMALL_CONFIG, str(work / "grids.yaml")]) == actual
    # eta searched: top_k = 2 validation second passes (2 x 20 images per task) before the test one (2 x 40)
    assert actual["evaluate_mass/tiny/2/proj"] == 2 * 40 + 80
    assert actual["evaluate_baseline/tiny/2/consensus"] == 2 * 40 + 40 + 80 + 40  # lambdas, alpha, test, val
    assert actual["routing_features/tiny/2/selected"] == 40 + 80


@pytest.mark.slow
@pytest.mark.parametrize("configfiles", [[], ["workflow/presets/demo.yaml"]], ids=["paper", "demo"])
def test_plan_lists_the_forwarding_jobs_of_snakemakes_full_dag(configfiles, tmp_path):
    """The paper's and the full demo's grids (every router, baseline and benchmark): the plan's jobs
    are the dry run's, named by their logs."""
    cwd = workflow_copy(tmp_path)
    run = snakemake("-n", "--forceall", "--cores", "2", *(["--configfile", *configfiles] if configfiles else []),
                    cwd=cwd, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    dag = sorted(job["log"].removeprefix("results/logs/").removesuffix(".log")
                 for job in planned_jobs(run.stdout + run.stderr) if job["rule"] in FORWARD_KIND)
    assert sorted(planned_per_job([str(ROOT / f) for f in configfiles])) == dag


def test_plan_reports_gpu_hours_at_the_given_rates_and_says_when_none_is_measured():
    with_rate = plan(SMALL_CONFIG, {"tiny": 100.0})
    assert abs(with_rate["total"]["gpu_hours"] - with_rate["total"]["images"] / 100 / 3600) < 1e-9
    text = render(plan(SMALL_CONFIG))
    assert "No GPU throughput measured for tiny" in text and "--images-per-second tiny=<images/s>" in text
