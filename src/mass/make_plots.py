"""Pipeline step: the paper's figures (PDF and PNG) from the per-task CSV and routing sweeps.

- ``radar_<bench>``: per-task normalised accuracy of MASS, backbones overlaid (Figs. 4, 9, 10);
- ``per_layer_<backbone>_<bench>``: routing accuracy per layer, attention and MLP, mean +- std
  over tasks, and per-task curves (Figs. 3, 7, 8, 11);
- ``batched``: per-sample vs batched MASS normalised accuracy (Fig. 6).
Every figure's numbers are also written as CSV beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mass.io import atomic_path  # noqa: E402


def save(fig: plt.Figure, data: pd.DataFrame, stem: Path, dpi: int) -> None:
    for ext in ("pdf", "png"):
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight")
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        data.to_csv(tmp, index=False)
    plt.close(fig)


def radar(per_task: pd.DataFrame, bench: str, stem: Path, dpi: int) -> None:
    data = per_task[(per_task.method == "mass_proj") & (per_task.benchmark == bench)]
    tasks = list(dict.fromkeys(data.task))
    angles = np.linspace(0, 2 * np.pi, len(tasks), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), subplot_kw={"polar": True})
    for bb, group in data.groupby("backbone", sort=False):
        values = group.set_index("task").loc[tasks, "normalized"].tolist()
        ax.plot(angles + angles[:1], values + values[:1], marker="o", markersize=3, label=bb)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    ax.set_xticks(angles, tasks, fontsize=8)
    ax.set_ylim(0, max(1.05, float(data.normalized.max()) + 0.05))
    ax.set_title(f"MASS normalised accuracy per task, {bench} tasks")
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    save(fig, data[["backbone", "task", "normalized"]], stem, dpi)


def per_layer(sweep: pd.DataFrame, title: str, stem: Path, dpi: int) -> None:
    data = sweep[(sweep.io == "in") & (sweep.token == sweep.token.iloc[0])].copy()
    data["module"] = data.module.map({"attn": "attention", "mlp": "MLP"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.pointplot(data=data, x="block", y="accuracy", hue="module", errorbar="sd", dodge=0.3, capsize=0.1,
                  ax=axes[0], markersize=4)
    axes[0].set(title=f"{title}: mean ± std over tasks", xlabel="block", ylabel="routing accuracy", ylim=(0, 1.02))
    mlp = data[data.module == "MLP"]
    sns.lineplot(data=mlp, x="block", y="accuracy", hue="task", marker="o", ax=axes[1])
    axes[1].set(title=f"{title}: per task (MLP input)", xlabel="block", ylabel="routing accuracy", ylim=(0, 1.02))
    axes[1].legend(fontsize=7, ncol=2)
    save(fig, data, stem, dpi)


def batched(per_task: pd.DataFrame, stem: Path, dpi: int) -> None:
    data = per_task[per_task.method.isin(["mass_proj", "mass_batched"])]
    avg = data.groupby(["backbone", "benchmark", "method"], sort=False).normalized.mean().reset_index()
    avg["setting"] = avg.backbone + " / " + avg.benchmark + " tasks"
    avg["method"] = avg.method.map({"mass_proj": "per-sample routing", "mass_batched": "batched routing"})
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * avg.setting.nunique()), 3.8))
    sns.barplot(data=avg, x="setting", y="normalized", hue="method", ax=ax)
    ax.set(ylabel="mean normalised accuracy", xlabel="", ylim=(0, 1.05), title="MASS with batched routing")
    save(fig, avg, stem, dpi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", required=True)
    parser.add_argument("--sweeps", nargs="+", required=True, help="BACKBONE:BENCHMARK:test sweep CSV entries")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--style", default="whitegrid")
    args = parser.parse_args()
    sns.set_theme(style=args.style)
    out = Path(args.out_dir)
    per_task = pd.read_csv(args.per_task, dtype={"benchmark": str})
    for bench in dict.fromkeys(per_task.benchmark):
        radar(per_task, bench, out / f"radar_{bench}", args.dpi)
    for entry in args.sweeps:
        backbone, bench, path = entry.split(":", 2)
        per_layer(pd.read_csv(path), f"{backbone}, {bench} tasks", out / f"per_layer_{backbone}_{bench}", args.dpi)
    batched(per_task, out / "batched", args.dpi)


if __name__ == "__main__":
    main()
