"""Run the Snakemake workflow in a scratch copy and read which jobs it plans (shared by the SLURM,
rerun and killed-job tests)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The smallest demo: the demo preset plus tests/slurm_demo.yaml (copied next to the Snakefile).
SMALL = ("--configfile", "workflow/presets/demo.yaml", "slurm_demo.yaml")
# Rules that gather every backbone and benchmark: they rerun whenever anything upstream changes.
AGGREGATES = {"collect_results", "make_tables", "make_plots", "accuracy_vs_cost", "all"}
# Rules that gather every task of a backbone (the provenance check): a new task reruns them, and
# nothing downstream reruns for that (the SVD cache reads their output as ancient).
BACKBONE_GATHERS = {"check_provenance"}


def workflow_copy(dest: Path) -> Path:
    """A copy of the workflow (no results) in ``dest``, with the tests' demo overlays next to the
    Snakefile; ``src`` is linked because rules read package data."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("envs", "workflow"):
        shutil.copytree(ROOT / name, dest / name)
    for name in ("slurm_demo.yaml", "ci_demo.yaml"):
        shutil.copy(ROOT / "tests" / name, dest / name)
    (dest / "src").symlink_to(ROOT / "src")
    return dest


def env() -> dict[str, str]:
    """The test's environment with this interpreter's scripts first, so jobs find ``python -m mass``."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def snakemake(*args: str, cwd: Path, timeout: int = 900, extra_env: dict | None = None,
              measured: float | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake under ``timeout -k 10``, so a hung run fails the test instead of the CI job.

    ``timeout`` is a limit against hanging, not a speed check: give it a wide margin over ``measured``
    (the run's time alone on the quiet 2-core machine), since a busy machine may take twice that. A run
    that reaches it fails the test saying so, instead of as the job failures Snakemake reports when killed.
    """
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", *args]
    started = time.monotonic()
    run = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if run.returncode in (124, 137):
        alone = f"{measured:.0f} s" if measured is not None else "not recorded"
        pytest.fail(f"snakemake {' '.join(args)} timed out after {time.monotonic() - started:.0f} s "
                    f"(limit {timeout} s; measured alone: {alone}); the machine may be busy, or the run hung: "
                    f"see the logs under {cwd}/results/logs", pytrace=False)
    return run


def planned_jobs(output: str) -> list[dict[str, str]]:
    """The jobs of a dry run, each as its printed fields (rule, output, wildcards, reason, ...)."""
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", output, re.M):
        fields = dict(line.strip().split(": ", 1) for line in m.group(2).splitlines() if ": " in line)
        jobs.append({"rule": m.group(1), **fields})
    return jobs


def dry_run(cwd: Path, *configfiles: str, targets: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Plan the small demo (plus more config files) with the default rerun triggers."""
    run = snakemake(*targets, "-n", "--cores", "2", *SMALL, *configfiles, cwd=cwd, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return planned_jobs(run.stdout + run.stderr)


def planned_commands(tmp_path: Path, overlay: dict, targets: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """Dry run of a copy of the workflow (the catalog's data file is then found through the installed package)
    with ``overlay`` on config.yaml: its output, its shell commands, and the fetch / check_head ones by step."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("workflow", "envs"):
        shutil.copytree(ROOT / name, tmp_path / name)
    (tmp_path / "overlay.yaml").write_text(json.dumps(overlay))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", *targets, "-n", "-p", "--cores", "2",
               "--configfile", "config.yaml", "overlay.yaml"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [" ".join(line.removeprefix("Shell command:").split()) for line in run.stdout.splitlines()
             if line.startswith("Shell command: python -m mass_pipeline.")]
    commands = {line.split()[2].removeprefix("mass_pipeline.steps."): line for line in lines
                if line.startswith(tuple(f"python -m mass_pipeline.steps.{s}" for s in ("fetch_", "check_head")))}
    return run.stdout, lines, commands
