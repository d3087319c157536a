"""Step collect_results: gather every per-task number of every method into one long CSV.

Columns: backbone, benchmark, method, task, accuracy (test; routed methods scored as the editions' code
scores them: the chosen head's logits fitted to the true task's class count), strict_accuracy (right head
and right class; equal to accuracy where the task is known), routing_accuracy (routed methods: MASS, SMILE, WEMoE),
size_fraction (TSV-C only: numbers stored over those of the dense task vector), finetuned (test),
normalized. Tables and figures are drawn from this file only, so each printed number can be traced
back. Every hyperparameter chosen on validation (epsilon, routing layer,
eta, alphas, Consensus lambdas) goes to one JSON beside it.
"""

from __future__ import annotations

import pandas as pd

from mass.io import atomic_path, write_json
from mass_pipeline.results import Endpoints, EpsilonChoice, MethodResult
from mass_pipeline.steps._cli import step_parser


def read_endpoints(entries: list[str]) -> tuple[dict, dict]:
    """Fine-tuned and zero-shot test accuracy per (backbone, task)."""
    ft, zs = {}, {}
    for entry in entries:
        backbone, path = entry.split(":", 1)
        data = Endpoints.load(path)
        ft[backbone, data.task] = data.finetuned_test
        zs[backbone, data.task] = data.zeroshot_test
    return ft, zs


def selected_epsilons(entries: list[str]) -> dict:
    """The validation choice of epsilon per (backbone, benchmark), with the score of every candidate."""
    out = {}
    for entry in entries:
        backbone, bench, path = entry.split(":", 2)
        data = EpsilonChoice.load(path)
        out[backbone, bench] = {"epsilon": data.epsilon, "selected_on": data.selected_on, "scores": data.scores}
    return out


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--results", nargs="+", required=True,
                        help="BACKBONE:BENCHMARK:path/to/method.json entries")
    parser.add_argument("--endpoints", nargs="+", required=True, help="BACKBONE:path/to/endpoints.json entries")
    parser.add_argument("--epsilons", nargs="+", required=True,
                        help="BACKBONE:BENCHMARK:path/to/selected_epsilon.json entries")
    parser.add_argument("--out", required=True)
    parser.add_argument("--hparams-out", required=True, help="JSON of every selected hyperparameter")
    args = parser.parse_args()
    ft, zs = read_endpoints(args.endpoints)
    hparams: dict = {}
    for (backbone, bench), chosen in selected_epsilons(args.epsilons).items():
        hparams.setdefault(backbone, {}).setdefault(bench, {})["epsilon"] = chosen
    rows = []
    for entry in args.results:
        backbone, bench, path = entry.split(":", 2)
        result = MethodResult.load(path)
        hparams.setdefault(backbone, {}).setdefault(bench, {})[result.method] = result.hyperparameters
        rows += [dict(backbone=backbone, benchmark=bench, **row) for row in result.rows()]
    benches: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        tasks = benches.setdefault((r["backbone"], r["benchmark"]), [])
        if r["task"] not in tasks:
            tasks.append(r["task"])
    for (backbone, bench), tasks in benches.items():
        for task in tasks:
            rows.append(dict(backbone=backbone, benchmark=bench, method="zeroshot", task=task,
                             accuracy=zs[backbone, task], strict_accuracy=zs[backbone, task], routing_accuracy=None,
                             size_fraction=None))
            rows.append(dict(backbone=backbone, benchmark=bench, method="finetuned", task=task,
                             accuracy=ft[backbone, task], strict_accuracy=ft[backbone, task], routing_accuracy=None,
                             size_fraction=None))
    table = pd.DataFrame(rows)
    table["finetuned"] = [ft[b, t] for b, t in zip(table.backbone, table.task, strict=True)]
    # undefined (NaN, not inf) where the fine-tuned model scores 0: random weights on a few images do
    table["normalized"] = table.accuracy / table.finetuned.where(table.finetuned > 0)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    write_json(args.hparams_out, hparams)


if __name__ == "__main__":
    main()
