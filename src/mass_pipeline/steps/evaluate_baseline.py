"""Step evaluate_baseline: a merging baseline of Table 2, its coefficients chosen on validation.

The baselines are the entries of :data:`mass_pipeline.methods.BASELINES`. Weight averaging has no
coefficient; the others pick alpha from their grid by mean validation accuracy; Consensus first
picks each task's TALL-mask lambda on that task's validation split. Test splits are only read
for the final numbers.
"""

from __future__ import annotations

import numpy as np

from mass import baselines
from mass.encoder import create_visual, image_size, load_visual
from mass.evaluation import evaluate_encoder, pick_best
from mass.forward import log_images_forwarded
from mass.heads import load_heads
from mass.io import load_tensors
from mass.task_vectors import StateDict, TaskVectorFiles, visual_state_dict
from mass.training import default_device
from mass.tsv import apply_delta
from mass_pipeline.data.benchmark import SplitData, load_benchmark_split
from mass_pipeline.methods import BASELINES
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import benchmark_parser, setup


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--method", required=True, choices=list(BASELINES))
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--finetuned", nargs="+", required=True)
    parser.add_argument("--alphas", nargs="+", type=float, help="alpha grid (every method but weight averaging)")
    parser.add_argument("--lambdas", nargs="+", type=float, help="TALL-mask lambda grid (Consensus TA)")
    for option, kind in {o: k for b in BASELINES.values() for o, k in b.options.items()}.items():
        parser.add_argument(f"--{option.replace('_', '-')}", type=kind, help=f"{option} (see docs/config.md)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    method = BASELINES[args.method]
    needed = (["alphas"] if method.alpha_grid else []) + (["lambdas"] if method.per_task_lambdas else []) + \
        list(method.options)
    missing = [o for o in needed if getattr(args, o) is None]
    if missing:
        parser.error(f"--method {method.name} needs " + ", ".join(f"--{o.replace('_', '-')}" for o in missing))
    options = {o: getattr(args, o) for o in method.options}
    build_merge = method.builder()

    pre = visual_state_dict(load_tensors(args.pretrained))
    # read layer by layer or task by task, never all T at once
    tvs = TaskVectorFiles(pre, args.finetuned, args.tasks, args.model)
    heads, _ = load_heads(args.heads, args.tasks, args.model)
    val = load_benchmark_split(args.data_dirs, args.tasks, "val")
    visual = create_visual(args.model, pre, default_device())
    size = image_size(args.model)

    def evaluate(delta: StateDict, data: SplitData, head_list=heads) -> dict[str, float]:
        load_visual(visual, apply_delta(pre, delta))
        return evaluate_encoder(visual, data, head_list, size, args.batch_size, default_device())

    hparams: dict = {}
    if method.per_task_lambdas:
        lambdas, lambda_scores, total = [], {}, baselines.task_sum(tvs)

        def best_lambda(t: int) -> tuple[float, dict[str, float]]:
            """Task t's lambda on its own validation split; its task vector is freed on return."""
            own, vector = load_benchmark_split([args.data_dirs[t]], [args.tasks[t]], "val"), tvs[t]

            def tall_score(lam: float) -> float:
                mask = baselines.tall_mask(vector, total, lam)
                return evaluate(baselines.tall_mask_model(mask, total), own, [heads[t]])[args.tasks[t]]
            return pick_best(args.lambdas, tall_score, f"lambda {args.tasks[t]}")

        for t, task in enumerate(args.tasks):
            lam, lambda_scores[task] = best_lambda(t)
            lambdas.append(lam)
        hparams.update(lambdas=dict(zip(args.tasks, lambdas, strict=True)), val_accuracy_by_lambda=lambda_scores)

        def build(alpha: float) -> StateDict:
            return build_merge(tvs, lambdas, alpha, **options)
    elif method.alpha_grid:
        def build(alpha: float) -> StateDict:
            return build_merge(tvs, alpha, **options)
    else:
        def build(alpha: float) -> StateDict:
            return build_merge(tvs, **options)

    # Every baseline is alpha times an update that does not depend on alpha (tests/unit/test_methods.py
    # checks it bit for bit), so the update, SVDs included, is computed once and scaled per grid value.
    unit = build(1.0)

    def scaled(alpha: float) -> StateDict:
        return {k: alpha * v for k, v in unit.items()}

    grid = args.alphas if method.alpha_grid else [1.0]
    alpha, scores = pick_best(grid, lambda a: float(np.mean(list(evaluate(scaled(a), val).values()))), method.name)
    hparams.update({"alpha": alpha, "val_mean_accuracy_by_alpha": scores, "selected_on": "val"})
    merged = scaled(alpha)
    test = load_benchmark_split(args.data_dirs, args.tasks, "test")
    MethodResult(method=method.name, test=evaluate(merged, test), val=evaluate(merged, val),
                 hyperparameters=hparams).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    main()
