"""Pipeline step: per-layer routing (task-identification) accuracy from stored residuals.

For every recorded location and token, the top-1 task of the projection router (smallest
residual) is compared to the true task; one CSV row per (location, token, task).
"""

from __future__ import annotations

import argparse

import pandas as pd

from mass.benchmark import FirstPassResult
from mass.io import atomic_path
from mass.routing import top1_accuracy_per_task
from mass.task_vectors import LayerId


def sweep(result: FirstPassResult, tasks: list[str]) -> pd.DataFrame:
    rows = []
    for key, residuals in result.residuals.items():
        block, module, io, token = key.split(".")
        layer = LayerId(int(block), module, io)
        for task, acc in top1_accuracy_per_task(residuals, result.task, tasks).items():
            rows.append({"layer": str(layer), "label": layer.label, "block": layer.block, "module": module,
                         "io": io, "token": token, "task": task, "accuracy": acc})
    return pd.DataFrame(rows).sort_values(["io", "token", "block", "module", "task"], kind="stable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-pass", required=True)
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    table = sweep(FirstPassResult.load(args.first_pass), args.tasks)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)


def add_candidate_location_args(parser: argparse.ArgumentParser) -> None:
    """Options naming the candidate routing locations that ``best_layer`` chooses among."""
    parser.add_argument("--blocks", nargs=2, type=int, required=True, help="candidate block range (inclusive)")
    parser.add_argument("--modules", nargs="+", default=["attn", "mlp"])
    parser.add_argument("--io", default="in")
    parser.add_argument("--token", default="cls")


def add_routing_location_args(parser: argparse.ArgumentParser) -> None:
    """Options naming the routing location: a fixed ``--layer``, or 'auto' among the candidates."""
    parser.add_argument("--layer", default="auto", help="'<block>.<attn|mlp>.<in|out>' or 'auto' (val sweep)")
    add_candidate_location_args(parser)


def routing_location(args: argparse.Namespace, val_first_pass: FirstPassResult,
                     tasks: list[str]) -> tuple[str, float | None]:
    """``--layer``, or for 'auto' the validation sweep's best candidate and its mean routing accuracy."""
    if args.layer != "auto":
        return args.layer, None
    return best_layer(sweep(val_first_pass, tasks), tuple(args.blocks), args.modules, args.io, args.token)


def best_layer(table: pd.DataFrame, blocks: tuple[int, int], modules: list[str], io: str,
               token: str) -> tuple[str, float]:
    """Location with the highest mean-over-tasks routing accuracy among the candidates
    (blocks inclusive range; the paper searches 7-11 for ViT-B and 19-23 for ViT-L)."""
    cand = table[(table.block >= blocks[0]) & (table.block <= blocks[1]) & table.module.isin(modules)
                 & (table.io == io) & (table.token == token)]
    if cand.empty:
        raise SystemExit(f"no recorded routing location in blocks {blocks}, modules {modules}, io {io}, token {token}")
    means = cand.groupby("layer", sort=False).accuracy.mean()
    return str(means.idxmax()), float(means.max())


if __name__ == "__main__":
    main()
