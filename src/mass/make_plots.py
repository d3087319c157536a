"""Pipeline step: the paper's figures (PDF and PNG) from the per-task CSV and routing sweeps.

- ``radar_<bench>``: per-task normalised accuracy of MASS, backbones overlaid (Figs. 4, 9, 10);
- ``per_layer_<backbone>_<bench>``: routing (task-identification) accuracy per block, attention
  and MLP inputs as separate curves: mean +- std over tasks, then every task's own curve
  (Figs. 3, 7, 8, 11); the layer chosen on validation is marked;
- ``batched``: per-sample vs batched MASS normalised accuracy (Fig. 6).
Every number a figure shows is written as CSV beside it. Plotting options (dpi, style) reach
only this step, so changing them redraws figures without recomputing anything.
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

from mass.io import atomic_path, read_csv, read_json  # noqa: E402

MODULES = {"attn": "attention", "mlp": "MLP"}


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
    save(fig, data[["backbone", "benchmark", "task", "accuracy", "finetuned", "normalized"]], stem, dpi)


def per_layer_data(sweep: pd.DataFrame, io: str, token: str) -> pd.DataFrame:
    """The sweep rows at module inputs/outputs (``io``) for one token, with each (block, module)'s
    mean and standard deviation over tasks beside every per-task number."""
    data = sweep[(sweep.io == io) & (sweep.token == token)].copy()
    if data.empty:
        raise SystemExit(f"the routing sweep holds no rows for io={io!r}, token={token!r}")
    stats = data.groupby(["block", "module"]).accuracy.agg(mean_over_tasks="mean", std_over_tasks="std")
    return data.join(stats, on=["block", "module"])[
        ["layer", "label", "block", "module", "io", "token", "task", "accuracy", "mean_over_tasks", "std_over_tasks"]]


def per_layer(data: pd.DataFrame, tasks: list[str], title: str, chosen: str | None, stem: Path, dpi: int) -> None:
    """Three panels: mean +- std over tasks, then per-task curves (benchmark order) at attention and MLP inputs."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2), sharey=True)
    summary = data.drop_duplicates(["block", "module"])
    for module, name in MODULES.items():
        rows = summary[summary.module == module].sort_values("block")
        line, = axes[0].plot(rows.block, rows.mean_over_tasks, marker="o", label=f"{name} input")
        axes[0].fill_between(rows.block, rows.mean_over_tasks - rows.std_over_tasks.fillna(0),
                             rows.mean_over_tasks + rows.std_over_tasks.fillna(0), color=line.get_color(), alpha=0.2)
    axes[0].set_title(f"{title}: mean ± std over tasks")
    for ax, (module, name) in zip(axes[1:], MODULES.items(), strict=True):
        sns.lineplot(data=data[data.module == module], x="block", y="accuracy", hue="task", hue_order=tasks,
                     marker="o", ax=ax, legend=module == "mlp")
        ax.set_title(f"{title}: per task, {name} input")
    axes[2].legend(title="task", fontsize=7, ncol=1 + len(data.task.unique()) // 12, loc="upper left",
                   bbox_to_anchor=(1.01, 1.0))
    blocks = sorted(data.block.unique())
    for ax in axes:
        ax.set(xlabel="block", ylabel="routing accuracy", ylim=(0, 1.02), xticks=blocks)
        if chosen:
            ax.axvline(int(chosen.split(".")[0]), color="grey", linestyle="--", linewidth=1)
    if chosen:
        axes[0].plot([], [], color="grey", linestyle="--", label=f"selected on val: {chosen}")
    axes[0].legend(fontsize=8, loc="lower right")
    save(fig, data, stem, dpi)


def batched(per_task: pd.DataFrame, stem: Path, dpi: int) -> None:
    data = per_task[per_task.method.isin(["mass_proj", "mass_batched"])]
    avg = data.groupby(["backbone", "benchmark", "method"], sort=False).normalized.mean().reset_index()
    avg["setting"] = avg.backbone + " / " + avg.benchmark + " tasks"
    avg["routing"] = avg.method.map({"mass_proj": "per-sample routing", "mass_batched": "batched routing"})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * avg.setting.nunique()), 3.8))
    sns.barplot(data=avg, x="setting", y="normalized", hue="routing", ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set(ylabel="mean normalised accuracy", xlabel="", ylim=(0, 1.1), title="MASS with batched routing")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(title="routing", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    save(fig, avg, stem, dpi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-task", required=True)
    parser.add_argument("--sweeps", nargs="+", required=True, help="BACKBONE:BENCHMARK:test sweep CSV entries")
    parser.add_argument("--hparams", required=True, help="selected_hyperparameters.json (marks the routing layer)")
    parser.add_argument("--io", default="in", help="routing at module inputs or outputs")
    parser.add_argument("--token", default="cls")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--style", default="whitegrid")
    args = parser.parse_args()
    sns.set_theme(style=args.style)
    out = Path(args.out_dir)
    per_task = read_csv(args.per_task, dtype={"benchmark": str})
    hparams = read_json(args.hparams)
    for bench in dict.fromkeys(per_task.benchmark):
        radar(per_task, bench, out / f"radar_{bench}", args.dpi)
    for entry in args.sweeps:
        backbone, bench, path = entry.split(":", 2)
        chosen = hparams.get(backbone, {}).get(bench, {}).get("mass_proj", {}).get("layer")
        rows = per_task[(per_task.backbone == backbone) & (per_task.benchmark == bench)]
        per_layer(per_layer_data(read_csv(path), args.io, args.token), list(dict.fromkeys(rows.task)),
                  f"{backbone}, {bench} tasks", chosen, out / f"per_layer_{backbone}_{bench}", args.dpi)
    batched(per_task, out / "batched", args.dpi)


if __name__ == "__main__":
    main()
