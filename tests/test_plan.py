"""The compute plan (workflow/scripts/plan.py) against a real run: every image-forwarding job of the
smallest demo logs ``images forwarded: N`` last, and the plan must predict each job and each count."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from plan import FORWARD_KIND, plan, render  # noqa: E402

SMALL_CONFIG = [str(ROOT / "workflow" / "presets" / "demo.yaml"), str(ROOT / "tests" / "slurm_demo.yaml")]
FORWARDED = re.compile(r"^images forwarded: (\d+)$", re.M)


def forwarded_per_job(logs: Path) -> dict[str, int]:
    """``<rule>/<wildcards>`` -> the images the job logged, for every rule that forwards images."""
    counts = {}
    for rule in FORWARD_KIND:
        for log in sorted((logs / rule).rglob("*.log")):
            found = FORWARDED.findall(log.read_text())
            assert found, f"{log} does not say how many images it forwarded"
            counts[log.relative_to(logs).with_suffix("").as_posix()] = int(found[-1])
    return counts


def test_plan_predicts_the_images_every_job_of_a_demo_run_forwarded(small_demo):
    predicted = plan(SMALL_CONFIG)
    planned = {f"{j['rule']}/{j['wildcards']}": j["images"] for j in predicted["jobs"]}
    actual = forwarded_per_job(small_demo / "results" / "logs")
    assert planned == actual
    per_rule = {r["rule"]: (r["jobs"], r["images"]) for r in predicted["rules"]}
    assert set(per_rule) == set(FORWARD_KIND)  # the smallest demo runs every forwarding rule
    assert predicted["total"]["images"] == sum(actual.values())


def test_plan_reports_gpu_hours_at_the_given_rates_and_says_when_none_is_measured():
    with_rate = plan(SMALL_CONFIG, {"tiny": 100.0})
    images = with_rate["total"]["images"]
    assert abs(with_rate["total"]["gpu_hours"] - images / 100 / 3600) < 1e-9
    text = render(plan(SMALL_CONFIG))
    assert "No GPU throughput measured for tiny" in text and "--images-per-second tiny=<images/s>" in text
