"""Step accuracy_vs_cost: every method of Table 2, its mean normalised accuracy against what it costs.

Per backbone and benchmark, from ``per_task.csv`` and the ``measure_cost`` step's ``cost.json``:
normalised accuracy against storage (parameters kept, in multiples of the pretrained encoder) and against
inference cost (multiply-adds and measured wall time per image, in plain forwards). Writes
``results/tables/accuracy_vs_cost.{tex,csv}`` and ``figures/accuracy_vs_cost.{pdf,png,csv}``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mass.io import read_json  # noqa: E402
from mass_pipeline.methods import TABLE2_ROWS  # noqa: E402
from mass_pipeline.report import means, save_figure, write_latex  # noqa: E402
from mass_pipeline.results import read_csv  # noqa: E402
from mass_pipeline.steps._cli import step_parser  # noqa: E402

COSTS = {"storage": "storage (x pretrained encoder)", "macs_over_forward": "multiply-adds (forwards)",
         "time_over_forward": "wall time (forwards)"}


def accuracy_vs_cost(per_task: pd.DataFrame, costs: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """One row per (backbone, benchmark, method) run and measured: its mean accuracy and normalised accuracy
    (%) and its costs, in Table 2's order."""
    avg = means(per_task)
    rows = []
    for (backbone, bench), cost in costs.items():
        for method, label in TABLE2_ROWS.items():
            hit = avg[(avg.method == method) & (avg.backbone == backbone) & (avg.benchmark.astype(str) == bench)]
            if hit.empty or method not in cost["methods"]:
                continue
            c = cost["methods"][method]
            rows.append({"backbone": backbone, "benchmark": bench, "method": label,
                         "accuracy": hit.accuracy.iloc[0], "normalized": hit.normalized.iloc[0],
                         **{key: c[key] for key in COSTS}, "basis": c["basis"]})
    return pd.DataFrame(rows, columns=["backbone", "benchmark", "method", "accuracy", "normalized", *COSTS, "basis"])


def figure(table: pd.DataFrame, stem: Path, dpi: int) -> None:
    """One row of panels per (backbone, benchmark): normalised accuracy against storage and against the
    measured wall time, one labelled point per method."""
    cells = list(dict.fromkeys(zip(table.backbone, table.benchmark, strict=True)))
    fig, axes = plt.subplots(len(cells), 2, figsize=(10, 3.6 * len(cells)), squeeze=False)
    for row, (backbone, bench) in zip(axes, cells, strict=True):
        data = table[(table.backbone == backbone) & (table.benchmark == bench)]
        for ax, key in zip(row, ("storage", "time_over_forward"), strict=True):
            ax.scatter(data[key], data.normalized, s=18)
            for _, point in data.iterrows():
                ax.annotate(point.method, (point[key], point.normalized), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(COSTS[key])
            ax.set_ylabel("normalised accuracy (%)")
            ax.set_title(f"{backbone}, {bench} tasks", fontsize=9)
    fig.tight_layout()
    save_figure(fig, table, stem, dpi)


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--per-task", required=True)
    parser.add_argument("--costs", nargs="+", required=True, help="<backbone>:<benchmark>:<cost.json> of each")
    parser.add_argument("--table", required=True, help="LaTeX path; the CSV goes beside it")
    parser.add_argument("--figure", required=True, help="figure stem: .pdf, .png and .csv are written")
    parser.add_argument("--dpi", type=int, required=True)
    args = parser.parse_args()
    per_task = read_csv(args.per_task, dtype={"benchmark": str})
    costs = {}
    for item in args.costs:
        backbone, bench, path = item.split(":", 2)
        costs[(backbone, bench)] = read_json(path)
    table = accuracy_vs_cost(per_task, costs)
    write_latex(table.set_index(["backbone", "benchmark", "method"]), Path(args.table),
                "Mean accuracy and normalised accuracy (\\%) of every method of Table 2 against its cost: parameters "
                "kept (multiples of the pretrained encoder's), multiply-adds and measured wall time per image "
                "(multiples of a plain forward's, on the same test images in one run); basis: which costs were "
                "measured and which are the plain forward's by construction.", "tab:accuracy-vs-cost", precision=2)
    figure(table, Path(args.figure), args.dpi)


if __name__ == "__main__":
    main()
