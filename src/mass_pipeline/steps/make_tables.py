"""Step make_tables: the paper's tables as LaTeX (booktabs), from the per-task CSV.

- ``table2.tex``: mean absolute (normalised) test accuracy, method x backbone x benchmark;
- ``table2_vs_paper.tex``: reproduced beside the numbers the run's edition published (its Table 2,
  :mod:`mass_pipeline.editions`) and the difference, absolute and normalised, one row per method x backbone x
  benchmark, each published number with the record it was read from (numbers from a secondary
  transcription are marked in the LaTeX);
- ``endpoints_vs_published.tex``: every task's fine-tuned test accuracy measured here beside the
  edition's published one, with the verdict of check_provenance (mass_pipeline.provenance); the deviations a
  run went on with are also footnoted under Table 2;
- ``table4.tex``: the paper's Table 4 from the prepared splits: each task's source image size and its
  train / val / test counts as prepared, beside the ones the edition published (where it did);
- ``table3.tex``: normalised accuracy of MASS by router, and of MASS with an oracle router (each image
  routed to its true task alone), which is TSV-C at the benchmark's k: the routing ceiling;
- ``routing_accuracy.tex``: mean task-identification accuracy of every routed method (MASS by router,
  batched MASS, SMILE, WEMoE);
- ``tsvc.tex``: TSV-C per task and its mean: accuracy, normalised accuracy and stored size (% of the
  dense task vector) at the benchmark's k and at the size budget (``tsvc.size_fraction``).
Each table also goes to CSV next to it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mass.data.store import TaskInfo
from mass.io import read_json
from mass_pipeline.editions import EDITIONS, Edition, load_edition
from mass_pipeline.methods import MOERGING, ROUTING_ROWS, TABLE2_ROWS, TABLE3_ROWS, TSVC_SETTINGS
from mass_pipeline.provenance import ACCEPTED, DEVIATION
from mass_pipeline.report import latex_escape, means, write_latex
from mass_pipeline.results import read_csv
from mass_pipeline.steps._cli import step_parser

# Marks a published number read from a secondary transcription (LaTeX of table2_vs_paper).
SECONDARY_MARK = "$^\\dagger$"


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


def table2_vs_paper(avg: pd.DataFrame, cols: list[tuple[str, str]], edition: Edition) -> pd.DataFrame:
    """One row per (method, backbone, benchmark): published, reproduced and their difference, absolute and
    normalised, and the record of each published number; differences are taken between the rounded
    numbers shown, so each row adds up."""
    rows = []
    for method, name in TABLE2_ROWS.items():
        for bb, bench in cols:
            cell = _cell(avg, method, bb, bench)
            if cell is None:
                continue
            row = {"edition": edition.name, "method": name, "backbone": bb, "benchmark": bench}
            for kind, key, value in (("abs", "table2_absolute", cell.accuracy),
                                     ("norm", "table2_normalized", cell.normalized)):
                table = edition.tables.get(key)
                paper, record = table.value(method, bb, bench) if table else (None, None)
                ours = round(float(value), 1)
                row.update({f"paper {kind}": paper, f"reproduced {kind}": ours,
                            f"difference {kind}": None if paper is None else round(ours - paper, 1),
                            f"source {kind}": None if record is None else edition.records[record].cite,
                            f"secondary {kind}": None if record is None else edition.records[record].secondary})
            row["note"] = "; ".join(t.notes[f"{method}/{bb}/{bench}"] for t in edition.tables.values()
                                    if f"{method}/{bb}/{bench}" in t.notes) or None
            rows.append(row)
    return pd.DataFrame(rows)


def vs_paper_latex(frame: pd.DataFrame) -> pd.DataFrame:
    """The comparison as printed: published numbers from a secondary transcription carry a dagger; the
    records themselves stay in the CSV."""
    shown = frame.drop(columns=[c for c in frame.columns
                                if c.startswith(("source ", "secondary ")) or c in ("edition", "note")])
    for kind in ("abs", "norm"):
        if f"paper {kind}" not in frame:
            continue
        shown[f"paper {kind}"] = [
            "--" if pd.isna(v) else f"{v:.1f}" + (SECONDARY_MARK if flag is True else "")
            for v, flag in zip(frame[f"paper {kind}"], frame[f"secondary {kind}"], strict=True)]
    return shown


def endpoints_vs_published(provenance: list[str]) -> pd.DataFrame:
    """Every backbone's provenance check (results/<backbone>/provenance.csv), one row per task."""
    return pd.concat([read_csv(p) for p in provenance], ignore_index=True) if provenance else pd.DataFrame()


def star_note(per_task: pd.DataFrame, args) -> str:
    """What the star of a method that adapts on unlabelled images (WEMoE) means in this run."""
    starred = [m for m in MOERGING.values() if m.sees_test_images and m.name in set(per_task.method)]
    if not starred:
        return ""
    images = "test images (as published: the one method here that sees them)" if args.wemoe_adapt_on == "test" \
        else "validation images (moerging.wemoe.adapt_on: val)"
    return f" {', '.join(m.label for m in starred)}: routers adapted on the unlabelled {images}."


def deviation_note(checks: pd.DataFrame) -> str:
    """Table 2's footnote: the tasks whose fine-tuned endpoint deviates from the edition's and why."""
    if checks.empty:
        return ""
    went_on = checks[checks.verdict.isin([DEVIATION, ACCEPTED])]
    notes = [f"{r.backbone} {r.task}: fine-tuned {r.measured:.1f} here vs {r.published:.1f} published "
             f"({r.verdict}: {r.note})" for r in went_on.itertuples()]
    return (" Deviations from the edition's fine-tuned checkpoints: " + "; ".join(notes) + ".") if notes else ""


def table3(avg: pd.DataFrame, cols: list[tuple[str, str]]) -> pd.DataFrame:
    return _grid(avg, cols, TABLE3_ROWS, lambda c: f"{c.normalized:.1f}")


def routing_table(avg: pd.DataFrame, cols: list[tuple[str, str]]) -> pd.DataFrame:
    return _grid(avg, cols, ROUTING_ROWS, lambda c: "" if pd.isna(c.routing_accuracy) else f"{c.routing_accuracy:.1f}")


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


def image_size_text(sizes: list[list[int]]) -> str | None:
    """``W×H`` when every source image has that size, else ``varies (w1-w2 × h1-h2)``; None if unknown."""
    if not sizes:
        return None
    (w_min, h_min), (w_max, h_max) = sizes
    if (w_min, h_min) == (w_max, h_max):
        return f"{w_min}×{h_min}"
    return f"varies ({w_min}-{w_max} × {h_min}-{h_max})"


def table4(infos: list[TaskInfo], edition: Edition) -> pd.DataFrame:
    """Per task: source image size and split sizes as prepared here, beside the edition's published ones."""
    rows = []
    for info in infos:
        published = edition.dataset_sizes.get(info.name, {})
        rows.append({"task": info.name, "image size": image_size_text(info.source_image_sizes),
                     **{split: info.split_sizes.get(split) for split in ("train", "val", "test")},
                     "published image size": published.get("image_size"),
                     **{f"published {split}": published.get(split) for split in ("train", "val", "test")}})
    return pd.DataFrame(rows, columns=["task", "image size", "train", "val", "test", "published image size",
                                       "published train", "published val", "published test"])


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--per-task", required=True)
    parser.add_argument("--edition", required=True, choices=EDITIONS)
    parser.add_argument("--provenance", nargs="*", default=[], help="every backbone's provenance.csv")
    parser.add_argument("--task-info", nargs="*", default=[], help="every task's prepared info.json (Table 4)")
    parser.add_argument("--wemoe-adapt-on", choices=["test", "val"], required=True,
                        help="the images WEMoE adapted on (moerging.wemoe.adapt_on), for the tables' captions")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    per_task = read_csv(args.per_task, dtype={"benchmark": str})
    edition = load_edition(args.edition)
    avg, cols, out = means(per_task), _columns(per_task), Path(args.out_dir)
    checks = endpoints_vs_published(args.provenance)
    write_latex(table2(avg, cols), out / "table2.tex",
                "Mean absolute test accuracy (\\%), normalised accuracy in parentheses." + star_note(per_task, args)
                + latex_escape(deviation_note(checks)), "tab:table2")
    vs_paper = table2_vs_paper(avg, cols, edition).set_index(["method", "backbone", "benchmark"])
    write_latex(vs_paper_latex(vs_paper), out / "table2_vs_paper.tex",
                f"Reproduced mean absolute and normalised accuracy (\\%) beside the {edition.name} edition's Table 2 "
                f"({latex_escape(edition.title)}); difference = reproduced $-$ paper; {SECONDARY_MARK}: read from a "
                "secondary transcription, not the paper itself (sources in table2\\_vs\\_paper.csv).",
                "tab:table2-vs-paper", csv_frame=vs_paper)
    write_latex(checks.set_index(["backbone", "task"]) if not checks.empty else checks,
                out / "endpoints_vs_published.tex",
                f"Fine-tuned test accuracy (\\%) measured here beside the {edition.name} edition's published one, "
                "with the verdict of the provenance check.", "tab:endpoints-vs-published")
    infos = [TaskInfo(**read_json(path)) for path in args.task_info]
    record = edition.record(edition.dataset_sizes_record)
    write_latex(table4(infos, edition).set_index("task").astype(object), out / "table4.tex",
                "Image sizes of the sources and train / validation / test images per task as prepared here, beside "
                f"the {edition.name} edition's" + (f" ({latex_escape(record.cite)})" if record else
                                                   " (it published none)") + ".", "tab:table4")
    write_latex(table3(avg, cols), out / "table3.tex",
                "Mean normalised accuracy (\\%) of MASS by router; oracle: each image routed to its true task "
                "alone, which is TSV-C at the benchmark's k.", "tab:table3")
    write_latex(routing_table(avg, cols), out / "routing_accuracy.tex",
                "Mean task-identification accuracy (\\%) of every routed method on the test splits: images whose "
                "first-ranked task is their own (MASS: lowest residual or the learned router's choice; SMILE, WEMoE: "
                "the voted head).",
                "tab:routing-accuracy")
    write_latex(tsvc_table(per_task).set_index(["backbone", "benchmark", "setting", "task"]), out / "tsvc.tex",
                "TSV-C: each task alone, its task matrices truncated to rank k; test accuracy, normalised "
                "accuracy and stored size (\\% of the dense task vector), per task and mean.", "tab:tsvc")


if __name__ == "__main__":
    main()
