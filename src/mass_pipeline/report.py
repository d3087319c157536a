"""Writing the report's tables and figures: booktabs LaTeX with its CSV beside it, a figure with the data
it plots, and the per-method means every table starts from. Used by the steps that write results/tables
and figures/ (make_tables, make_plots, accuracy_vs_cost)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mass.io import atomic_path

if TYPE_CHECKING:  # matplotlib is imported by the steps that draw (~1 s): make_tables does not pay for it
    import matplotlib.pyplot as plt


def means(per_task: pd.DataFrame) -> pd.DataFrame:
    """Mean over tasks, in %, per (method, backbone, benchmark); routing accuracy NaN for unrouted methods."""
    grouped = per_task.groupby(["method", "backbone", "benchmark"], sort=False)[
        ["accuracy", "normalized", "routing_accuracy"]].mean()
    return (grouped * 100).reset_index()


def latex_escape(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_").replace("&", "\\&")


def write_latex(frame: pd.DataFrame, path: Path, caption: str, label: str,
                csv_frame: pd.DataFrame | None = None, precision: int = 1) -> None:
    """``frame`` as a booktabs table in ``path`` (numbers to ``precision`` decimals) and as CSV beside it
    (``csv_frame`` instead, if given)."""
    latex = frame.style.format(na_rep="--", precision=precision).to_latex(
        hrules=True, caption=caption, label=label,
        column_format="l" * frame.index.nlevels + "c" * len(frame.columns),
        multicol_align="c", position="t")
    with atomic_path(path) as tmp:
        tmp.write_text(latex)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        (frame if csv_frame is None else csv_frame).to_csv(tmp)


def save_figure(fig: plt.Figure, data: pd.DataFrame, stem: Path, dpi: int) -> None:
    """``fig`` as ``stem``.pdf and .png, and the data it plots as ``stem``.csv."""
    import matplotlib.pyplot as plt
    for ext in ("pdf", "png"):
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight")
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        data.to_csv(tmp, index=False)
    plt.close(fig)
