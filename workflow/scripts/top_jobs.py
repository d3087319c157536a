"""The most expensive jobs of a run, from Snakemake's ``benchmark:`` files (wall time, peak memory).

Every computing rule writes ``results/benchmarks/<rule>/<wildcards...>.tsv`` (one row: seconds,
max_rss in MB, cpu_time, ...). ``make demo`` prints the top ten after the run, so a user sees where
the time goes without reading logs:

    python workflow/scripts/top_jobs.py [results/benchmarks] [--top 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def job_costs(root: Path) -> pd.DataFrame:
    """One row per benchmark file: job (rule and wildcards, from the path), wall s, peak RSS MB, CPU s."""
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        if table.empty:
            continue
        last = table.iloc[-1]  # ``benchmark: repeat(...)`` appends rows; the last run is the newest
        rows.append({"job": path.relative_to(root).with_suffix("").as_posix(), "wall_s": float(last["s"]),
                     "max_rss_mb": float(last["max_rss"]) if last["max_rss"] != "-" else float("nan"),
                     "cpu_s": float(last["cpu_time"]) if last["cpu_time"] != "-" else float("nan")})
    return pd.DataFrame(rows, columns=["job", "wall_s", "max_rss_mb", "cpu_s"])


def report(costs: pd.DataFrame, top: int) -> str:
    """The ``top`` jobs by wall time, then the total over all jobs (CPU seconds add up across cores)."""
    if costs.empty:
        return "no benchmark files found: run the workflow first\n"
    lines = [f"{'job':<60} {'wall s':>8} {'peak MB':>8}"]
    for row in costs.sort_values("wall_s", ascending=False).head(top).itertuples():
        lines.append(f"{row.job:<60} {row.wall_s:>8.1f} {row.max_rss_mb:>8.0f}")
    lines.append(f"{len(costs)} jobs: {costs['wall_s'].sum():.0f} s of job wall time, "
                 f"{costs['cpu_s'].sum():.0f} s of CPU time")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="results/benchmarks", type=Path)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    sys.stdout.write(report(job_costs(args.root), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
