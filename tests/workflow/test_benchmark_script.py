"""benchmarks/run.py keeps running: a --quick smoke run on the tiny ViT (timings are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_every_item(tmp_path):
    out = tmp_path / "quick.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-dry-run",
                          "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    rows = result["throughput"]
    assert [r["case"] for r in rows] == ["random", "realistic"]
    for r in rows:
        for key in ("first_pass_over_forward", "routing_pass_over_forward", "second_pass_over_forward",
                    "mass_over_forward"):
            assert isinstance(r[key], float) and 0 < r[key] < float("inf"), key  # a ratio of two times
        # the official strategy ran on the same work and predicts as this project does
        assert r["official_second_pass_s"] > 0 and r["official_over_this_project"] > 0
        assert r["official_same_predictions"] == 1.0
        # SMILE and WEMoE on the same images and rounds; MASS's counted multiply-adds never below its floor
        for key in ("smile_over_forward", "wemoe_over_forward", "mass_time_over_floor",
                    "wemoe_adaptation_s_per_step", "wemoe_adaptation_published_steps_s_extrapolated"):
            assert 0 < r[key] < float("inf"), key
        assert r["mass_macs_over_forward"] >= r["floor_macs_over_forward"] > 1
        assert r["smile_macs_over_forward"] > 1 and r["wemoe_macs_over_forward"] > 1
        assert r["wemoe_over_pretrained"] > r["smile_over_pretrained"] > 1
    storage = result["storage"]
    # each task keeps k = floor(r / 4) triplets of every matrix: over all 4 tasks about one
    # r x (m + n) set per matrix, between 1x and 2x the matrices' own size; the total adds the
    # pretrained encoder and the dense deltas of the other tensors
    assert 1.0 < storage["T4_triplets_over_pretrained"] < 2.0
    assert storage["T4_mass_over_pretrained"] == pytest.approx(
        1 + storage["T4_triplets_over_pretrained"] + storage["T4_dense_deltas_over_pretrained"])
    # every step's memory comes from a process of its own: a peak above what its inputs hold
    memory = result["memory"]
    assert set(memory) == {"forward", "mass_random", "mass_realistic", "smile", "wemoe", "merge_dense",
                           "merge_factored", "svd_cache", "svd_plain"}
    for step, by_t in memory.items():
        report = by_t["T4"]
        assert report["scope"] == "step", step
        assert 0 < report["rise_mib"] < report["peak_mib"], step
    table = out.with_suffix(".md").read_text()
    assert "| 4 | random |" in table
    assert "official / this project" in table
    assert "| MASS, random mix (setup included) |" in table
    assert "| SMILE (model built included) |" in table and "MASS time / floor" in table


def test_throughput_only_times_the_passes_and_nothing_else(tmp_path):
    out = tmp_path / "quick.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--throughput-only",
                          "--repeats", "1", "--official-repeats", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert [r["case"] for r in result["throughput"]] == ["random", "realistic"]
    assert not {"merge", "storage", "svd", "memory", "snakemake_dry_run"} & set(result)
    assert "| 4 | random |" in out.with_suffix(".md").read_text()
