"""Step make_tables: the paper's tables as LaTeX (booktabs), from the per-task CSV.

- ``table2.tex``: mean absolute (normalised) test accuracy, method x backbone x benchmark;
- ``table2_vs_paper.tex``: reproduced beside the published numbers (the paper's Table 2, in
  ``mass/data/published.json``) and the difference, absolute and normalised, one row per method x
  backbone x benchmark;
- ``table3.tex``: normalised accuracy of MASS by router, and of MASS with an oracle router (each image
  routed to its true task alone), which is TSV-C at the benchmark's k: the routing ceiling;
- ``tsvc.tex``: TSV-C per task and its mean: accuracy, normalised accuracy and stored size (% of the
  dense task vector) at the benchmark's k and at the size budget (``tsvc.size_fraction``).
Each table also goes to CSV next to it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd

from mass.io import atomic_path, read_csv
from mass.methods import TABLE2_ROWS, TABLE3_ROWS, TSVC_SETTINGS
from mass.steps._cli import step_parser


def published() -> dict:
    return json.loads((resources.files("mass") / "data" / "published.json").read_text())


def means(per_task: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks, in %, per (method, backbone, benchmark)."""
    grouped = per_task.groupby(["method", "backbone", "benchmark"], sort=False)[["accuracy", "normalized"]].mean()
    return (grouped * 100).reset_index()


def _columns(per_task: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(per_task.backbone, per_task.benchmark.astype(str), strict=True)))


def _cell(avg: pd.DataFrame, method: str, backbone: str, bench: str) -> pd.Series | None:
    """The averaged row of one method on one (backbone, benchmark), or None if it was not run."""
    hit = avg[(avg.method == method) & (avg.backbone == backbone) & (avg.benchmark.astype(str) == bench)]
    return None if hit.empty else hit.iloc[0]


def _grid(avg: pd.DataFrame, cols: list[tuple[str, str]], names: dict[str, str], fmt) -> pd.DataFrame:
    """Methods as rows, (backbone, benchmark) as columns, ``fmt(row)`` in each cell; empty rows dropped."""
    out = {}
    for method, name in names.items():
        cells = {(bb, f"{bench} tasks"): _cell(avg, method, bb, bench) for bb, bench in cols}
        if any(c is not None for c in cells.values()):
            out[name] = {k: "" if c is None else fmt(c) for k, c in cells.items()}
    return pd.DataFrame.from_dict(out, orient="index")


def table2(avg: pd.DataFrame, cols: list[tuple[str, str]]) -> pd.DataFrame:
    return _grid(avg, cols, TABLE2_ROWS, lambda c: f"{c.accuracy:.1f} ({c.normalized:.1f})")


def _published_value(pub: dict, key: str, method: str, backbone: str, bench: str) -> float | None:
    """A number of the paper's Table 2 (``key``: table2_absolute or table2_normalized), if it has one."""
    values = pub[key].get(method, {}).get(backbone)
    return values[pub["benchmarks"].index(bench)] if values and bench in pub["benchmarks"] else None


def table2_vs_paper(avg: pd.DataFrame, cols: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per (method, backbone, benchmark): published, reproduced and their difference, absolute and
    normalised; differences are taken between the rounded numbers shown, so each row adds up."""
    pub = published()
    rows = []
    for method, name in TABLE2_ROWS.items():
        for bb, bench in cols:
            cell = _cell(avg, method, bb, bench)
            if cell is None:
                continue
            row = {"method": name, "backbone": bb, "benchmark": bench}
            for kind, key, value in (("abs", "table2_absolute", cell.accuracy),
                                     ("norm", "table2_normalized", cell.normalized)):
                paper, ours = _published_value(pub, key, method, bb, bench), round(float(value), 1)
                row.update({f"paper {kind}": paper, f"reproduced {kind}": ours,
                            f"difference {kind}": None if paper is None else round(ours - paper, 1)})
            rows.append(row)
    return pd.DataFrame(rows)


def table3(avg: pd.DataFrame, cols: list[tuple[str, str]]) -> pd.DataFrame:
    return _grid(avg, cols, TABLE3_ROWS, lambda c: f"{c.normalized:.1f}")


def tsvc_table(per_task: pd.DataFrame) -> pd.DataFrame:
    """TSV-C per (backbone, benchmark, setting): every task's accuracy, normalised accuracy and stored
    size fraction (%), then their mean over the tasks."""
    rows = []
    data = per_task[per_task.method.isin(list(TSVC_SETTINGS))]
    for (backbone, bench, method), group in data.groupby(["backbone", "benchmark", "method"], sort=False):
        entries = [(task, g) for task, g in group.groupby("task", sort=False)] + [("mean", group)]
        for task, g in entries:
            rows.append({"backbone": backbone, "benchmark": str(bench), "setting": TSVC_SETTINGS[method],
                         "task": task, "accuracy": 100 * g.accuracy.mean(), "normalized": 100 * g.normalized.mean(),
                         "stored size": 100 * g.size_fraction.mean()})
    return pd.DataFrame(rows, columns=["backbone", "benchmark", "setting", "task", "accuracy", "normalized",
                                       "stored size"])


def write_latex(frame: pd.DataFrame, path: Path, caption: str, label: str) -> None:
    latex = frame.style.format(na_rep="--", precision=1).to_latex(
        hrules=True, caption=caption, label=label,
        column_format="l" * frame.index.nlevels + "c" * len(frame.columns),
        multicol_align="c", position="t")
    with atomic_path(path) as tmp:
        tmp.write_text(latex)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        frame.to_csv(tmp)


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--per-task", required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    per_task = read_csv(args.per_task, dtype={"benchmark": str})
    avg, cols, out = means(per_task), _columns(per_task), Path(args.out_dir)
    write_latex(table2(avg, cols), out / "table2.tex",
                "Mean absolute test accuracy (\\%), normalised accuracy in parentheses.", "tab:table2")
    write_latex(table2_vs_paper(avg, cols).set_index(["method", "backbone", "benchmark"]),
                out / "table2_vs_paper.tex",
                "Reproduced mean absolute and normalised accuracy (\\%) beside the published Table 2; "
                "difference = reproduced $-$ paper.", "tab:table2-vs-paper")
    write_latex(table3(avg, cols), out / "table3.tex",
                "Mean normalised accuracy (\\%) of MASS by router; oracle: each image routed to its true task "
                "alone, which is TSV-C at the benchmark's k.", "tab:table3")
    write_latex(tsvc_table(per_task).set_index(["backbone", "benchmark", "setting", "task"]), out / "tsvc.tex",
                "TSV-C: each task alone, its task matrices truncated to rank k; test accuracy, normalised "
                "accuracy and stored size (\\% of the dense task vector), per task and mean.", "tab:tsvc")


if __name__ == "__main__":
    main()
