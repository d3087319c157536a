"""Step make_plots: the paper's figures (PDF and PNG) from the per-task CSV and routing sweeps.

- ``radar_<bench>``: per-task normalised accuracy of MASS, backbones overlaid (Figs. 4, 9, 10), and of
  the other MoErging methods run (SMILE, WEMoE), dashed;
- ``per_layer_<backbone>_<bench>``: routing (task-identification) accuracy per block, attention
  and MLP inputs as separate curves: mean +- std over tasks, then every task's own curve
  (Figs. 3, 7, 8, 11); the layer chosen on validation is marked;
- ``batched``: per-sample vs batched MASS normalised accuracy (Fig. 6);
- ``confusion_<backbone>_<bench>``: where the projection router of MASS (Table 2's row) sends each
  task's test images: alone to a task, or to several tasks (with or without the true one), and
  which task it ranks first (mass_pipeline.routing_analysis);
- ``selection_sizes_<backbone>_<bench>``: how many tasks it selects per image (1 .. top-k), per task;
- ``textspan_<backbone>_<bench>``: TEXTSPAN descriptions of each task's singular vectors at the
  routing block and at an early block, beside test images of the task (Figs. 5, 12; mass.textspan).
Every number a figure shows is written as CSV beside it. Plotting options (dpi, style) reach
only this step, so changing them redraws figures without recomputing anything.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mass.io import load_arrays, read_json  # noqa: E402
from mass_pipeline.methods import MOERGING  # noqa: E402
from mass_pipeline.report import save_figure  # noqa: E402
from mass_pipeline.results import read_csv  # noqa: E402
from mass_pipeline.routing_analysis import confusion_counts, selection_sizes, top1_counts  # noqa: E402
from mass_pipeline.steps._cli import step_parser

MODULES = {"attn": "attention", "mlp": "MLP"}


RADAR = {"mass_proj": ("MASS", "-"), **{n: (m.label, "--") for n, m in MOERGING.items()}}


def radar(per_task: pd.DataFrame, bench: str, stem: Path, dpi: int) -> None:
    """Normalised accuracy per task of MASS (solid, filled) and of the other MoErging methods run (dashed),
    one colour per backbone."""
    data = per_task[per_task.method.isin(list(RADAR)) & (per_task.benchmark == bench)]
    tasks = list(dict.fromkeys(data.task))
    angles = np.linspace(0, 2 * np.pi, len(tasks), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), subplot_kw={"polar": True})
    colours = dict(zip(dict.fromkeys(data.backbone), sns.color_palette(n_colors=data.backbone.nunique()), strict=True))
    for (bb, method), group in data.groupby(["backbone", "method"], sort=False):
        label, style = RADAR[method]
        values = group.set_index("task").loc[tasks, "normalized"].tolist()
        ax.plot(angles + angles[:1], values + values[:1], style, marker="o", markersize=3, color=colours[bb],
                label=f"{label}, {bb}")
        if method == "mass_proj":
            ax.fill(angles + angles[:1], values + values[:1], alpha=0.1, color=colours[bb])
    ax.set_xticks(angles, tasks, fontsize=8)
    ax.set_ylim(0, max(1.05, float(data.normalized.max()) + 0.05))
    ax.set_title(f"Normalised accuracy per task, {bench} tasks")
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=7)
    columns = ["backbone", "benchmark", "method", "task", "accuracy", "finetuned", "normalized"]
    save_figure(fig, data[columns], stem, dpi)


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
    save_figure(fig, data, stem, dpi)


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
    save_figure(fig, avg, stem, dpi)


def _long(counts: pd.DataFrame, matrix: str) -> pd.DataFrame:
    """A counts matrix as rows (true task, column, count, fraction of the true task's test images)."""
    frac = counts.div(counts.sum(axis=1), axis=0)
    out = counts.stack().rename("count").to_frame().join(frac.stack().rename("fraction")).reset_index()
    out.columns = ["true_task", "sent_to", "count", "fraction"]
    out.insert(0, "matrix", matrix)
    return out


def confusion(routing: dict[str, np.ndarray], title: str, stem: Path, dpi: int) -> None:
    """Two heatmaps of row fractions: the selection (alone / several tasks) and the top-ranked task."""
    names = [str(n) for n in routing["tasks"]]
    sel = confusion_counts(routing["selection"], routing["task"], names)
    top = top1_counts(routing["routed"], routing["task"], names)
    T = len(names)
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 0.75 * (2 * T + 2), 1.6 + 0.55 * T),
                             gridspec_kw={"width_ratios": [T + 2, T]})
    for ax, counts, name in ((axes[0], sel, "selected tasks"), (axes[1], top, "top-ranked task")):
        frac = counts.div(counts.sum(axis=1), axis=0)
        sns.heatmap(frac, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="Blues", cbar=False, ax=ax,
                    annot_kws={"fontsize": 7})
        ax.set(xlabel=name, ylabel="true task")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    axes[0].set_title(f"{title}: routed alone to / to several tasks")
    axes[1].set_title("task ranked first")
    data = pd.concat([_long(sel, "selection"), _long(top, "top1")], ignore_index=True)
    save_figure(fig, data, stem, dpi)


def sizes_figure(routing: dict[str, np.ndarray], title: str, top_k: int, stem: Path, dpi: int) -> None:
    """Stacked bars: share of each task's test images routed to 1, 2, ... top-k tasks."""
    names = [str(n) for n in routing["tasks"]]
    data = selection_sizes(routing["selection"], routing["task"], names, top_k)
    wide = data.pivot(index="task", columns="size", values="fraction").loc[[*names, "all"]]
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.35 * len(wide)))
    left = np.zeros(len(wide))
    for size in wide.columns:
        ax.barh(wide.index, wide[size], left=left, label=f"{size} task{'s' if size > 1 else ''}")
        left += wide[size].to_numpy()
    ax.invert_yaxis()
    ax.set(xlabel="share of test images", xlim=(0, 1), title=f"{title}: tasks selected per image")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    save_figure(fig, data, stem, dpi)


def textspan_figure(picks: pd.DataFrame, images: dict[str, np.ndarray], title: str, stem: Path, dpi: int) -> None:
    """One row per task: its test images, then the descriptions TEXTSPAN picked at the routing block and at the
    early block, each with the share of variance its direction explained."""
    names = [str(n) for n in images["tasks"]]
    per_task = max((int((images["task"] == t).sum()) for t in range(len(names))), default=0)
    roles = [r for r in ("routing", "early") if r in set(picks.role)]
    height = 0.6 + 1.15 * len(names)
    fig = plt.figure(figsize=(1.1 * per_task + 4.6 * len(roles), height))
    grid = fig.add_gridspec(len(names), per_task + len(roles), width_ratios=[1] * per_task + [4.2] * len(roles),
                            wspace=0.08, hspace=0.25, top=1 - 0.55 / height)
    for t, name in enumerate(names):
        for j, img in enumerate(images["images"][images["task"] == t]):
            ax = fig.add_subplot(grid[t, j])
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
        for c, role in enumerate(roles):
            rows = picks[(picks.task == name) & (picks.role == role)].sort_values("rank")
            ax = fig.add_subplot(grid[t, per_task + c])
            ax.axis("off")
            lines = [f"{int(r['rank'])}. {r['text']} ({100 * r['explained']:.0f}%)" for _, r in rows.iterrows()]
            ax.text(0.02, 0.5, "\n".join(lines), fontsize=7, va="center", ha="left", family="monospace",
                    transform=ax.transAxes)
            if t == 0:
                layer = rows.layer.iloc[0] if len(rows) else ""
                ax.set_title(f"{role} location {layer}", fontsize=9)
    fig.suptitle(f"{title}: task singular vectors decoded by TEXTSPAN", fontsize=10, y=1 - 0.1 / height)
    save_figure(fig, picks, stem, dpi)


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--per-task", required=True)
    parser.add_argument("--sweeps", nargs="+", required=True, help="BACKBONE:BENCHMARK:test sweep CSV entries")
    parser.add_argument("--routing", nargs="*", default=[],
                        help="BACKBONE:BENCHMARK:mass_proj_routing.npz entries (confusion, selection sizes)")
    parser.add_argument("--textspan", nargs="*", default=[],
                        help="BACKBONE:BENCHMARK:textspan.csv:textspan_images.npz entries "
                             "(mass_pipeline.steps.interpret_tsv)")
    parser.add_argument("--top-k", type=int, required=True, help="most tasks a selection holds (routing.top_k)")
    parser.add_argument("--hparams", required=True, help="selected_hyperparameters.json (marks the routing layer)")
    parser.add_argument("--io", required=True, help="routing at module inputs or outputs")
    parser.add_argument("--token", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--dpi", type=int, required=True)
    parser.add_argument("--style", required=True)
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
    for entry in args.routing:
        backbone, bench, path = entry.split(":", 2)
        routing = load_arrays(path)
        confusion(routing, f"{backbone}, {bench} tasks", out / f"confusion_{backbone}_{bench}", args.dpi)
        sizes_figure(routing, f"{backbone}, {bench} tasks", args.top_k, out / f"selection_sizes_{backbone}_{bench}",
                     args.dpi)
    for entry in args.textspan:
        backbone, bench, picks, images = entry.split(":", 3)
        textspan_figure(read_csv(picks), load_arrays(images), f"{backbone}, {bench} tasks",
                        out / f"textspan_{backbone}_{bench}", args.dpi)


if __name__ == "__main__":
    main()
