"""Pipeline step: the paper's tables as LaTeX (booktabs), from the per-task CSV.

- ``table2.tex``: mean absolute (normalised) test accuracy, method x backbone x benchmark;
- ``table2_vs_paper.tex``: reproduced beside the published numbers, with the difference;
- ``table3.tex``: normalised accuracy of MASS by router.
Each table also goes to CSV next to it.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import pandas as pd

from mass.io import atomic_path

METHOD_NAMES = {"zeroshot": "Zero-shot", "finetuned": "Fine-tuned", "weight_averaging": "Weight averaging",
                "task_arithmetic": "Task Arithmetic", "consensus": "Consensus TA", "tsvm": "TSV-M",
                "iso_c": "Iso-C", "iso_cts": "Iso-CTS", "mass_proj": "MASS"}
ROUTER_NAMES = {"mass_nn": "nn", "mass_mlp": "mlp", "mass_proj_pre": "proj$_{PRE}$", "mass_proj": "proj$_{TSV-M}$"}


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
    return _grid(avg, cols, METHOD_NAMES, lambda c: f"{c.accuracy:.1f} ({c.normalized:.1f})")


def table2_vs_paper(avg: pd.DataFrame, cols: list[tuple[str, str]]) -> pd.DataFrame:
    pub = published()
    rows = []
    for method, name in METHOD_NAMES.items():
        for bb, bench in cols:
            cell = _cell(avg, method, bb, bench)
            if cell is None:
                continue
            idx = pub["benchmarks"].index(bench) if bench in pub["benchmarks"] else None
            paper = pub["table2_absolute"].get(method, {}).get(bb)
            paper_abs = paper[idx] if paper and idx is not None else None
            ours = float(cell.accuracy)
            rows.append({"method": name, "backbone": bb, "benchmark": bench, "reproduced": round(ours, 1),
                         "paper": paper_abs, "difference": None if paper_abs is None else round(ours - paper_abs, 1)})
    return pd.DataFrame(rows)


def table3(avg: pd.DataFrame, cols: list[tuple[str, str]]) -> pd.DataFrame:
    return _grid(avg, cols, ROUTER_NAMES, lambda c: f"{c.normalized:.1f}")


def write_latex(frame: pd.DataFrame, path: Path, caption: str, label: str) -> None:
    latex = frame.style.format(na_rep="--", precision=1).to_latex(
        hrules=True, caption=caption, label=label, column_format="l" + "c" * len(frame.columns),
        multicol_align="c", position="t")
    with atomic_path(path) as tmp:
        tmp.write_text(latex)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        frame.to_csv(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    per_task = pd.read_csv(args.per_task, dtype={"benchmark": str})
    avg, cols, out = means(per_task), _columns(per_task), Path(args.out_dir)
    write_latex(table2(avg, cols), out / "table2.tex",
                "Mean absolute test accuracy (\\%), normalised accuracy in parentheses.", "tab:table2")
    write_latex(table2_vs_paper(avg, cols).set_index("method"), out / "table2_vs_paper.tex",
                "Reproduced mean absolute accuracy (\\%) beside the published Table 2.", "tab:table2-vs-paper")
    write_latex(table3(avg, cols), out / "table3.tex",
                "Mean normalised accuracy (\\%) of MASS by router.", "tab:table3")


if __name__ == "__main__":
    main()
