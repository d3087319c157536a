"""Where a run's time goes: every computing rule has a ``benchmark:`` file, and make demo lists the
most expensive jobs from them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from top_jobs import job_costs, report  # noqa: E402

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_every_rule_with_a_log_records_its_cost_under_its_own_name():
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"(?m)^(?=rule |use rule )", path.read_text())[1:]:
            name = re.match(r"(?:use rule \w+ as |rule )(\w+)", block).group(1)
            if "    log:" in block:
                bench = re.search(r'(?m)^    benchmark:\n        "results/benchmarks/(\w+)[/.]', block)
                assert bench and bench.group(1) == name, (path.name, name)


def test_top_jobs_are_sorted_by_wall_time_with_their_peak_memory(tmp_path):
    for job, (wall, rss, cpu) in {"svd_cache/tiny/a": (3.5, 900.0, 6.0), "finetune/tiny/a": (40.0, 1500.0, 38.0),
                                  "merge/tiny/4/eps0.1": (1.25, 700.0, 1.0)}.items():
        path = tmp_path / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + f"{wall}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    costs = job_costs(tmp_path)
    lines = report(costs, top=2).splitlines()
    assert lines[1].split()[:3] == ["finetune/tiny/a", "40.0", "1500"]
    assert lines[2].split()[0] == "svd_cache/tiny/a" and len(lines) == 4
    assert lines[3] == "3 jobs: 45 s of job wall time, 45 s of CPU time"
