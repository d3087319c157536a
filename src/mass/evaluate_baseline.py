"""Pipeline step: a merging baseline of Table 2, its coefficients chosen on validation.

Weight averaging has no coefficient; Task Arithmetic, Consensus TA, Iso-C and Iso-CTS pick
alpha from their grid by mean validation accuracy; Consensus first picks each task's TALL-mask
lambda on that task's validation split. Test splits are only read for the final numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from mass import baselines
from mass.benchmark import SplitData, common_parser, device, load_benchmark_split, load_heads, setup
from mass.encoder import create_visual, image_size, load_visual
from mass.evaluation import evaluate_encoder
from mass.io import load_tensors, write_json
from mass.task_vectors import StateDict, TaskVector, visual_state_dict
from mass.tsv import apply_delta

METHODS = ("weight_averaging", "task_arithmetic", "consensus", "iso_c", "iso_cts")


def pick(grid: Sequence[float], score: Callable[[float], float], desc: str) -> tuple[float, dict[str, float]]:
    """Best grid value (first on ties) and every value's score."""
    scores = {str(v): score(v) for v in tqdm(grid, desc=desc, leave=False)}
    best = max(grid, key=lambda v: (scores[str(v)], -list(grid).index(v)))
    return best, scores


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--finetuned", nargs="+", required=True)
    parser.add_argument("--alphas", nargs="*", type=float, default=[])
    parser.add_argument("--lambdas", nargs="*", type=float, default=[], help="Consensus TALL-mask grid")
    parser.add_argument("--min-agreement", type=int, default=2)
    parser.add_argument("--common-fraction", type=float, default=0.8, help="Iso-CTS common subspace")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    pre = visual_state_dict(load_tensors(args.pretrained))
    tvs = [TaskVector.from_state_dicts(pre, load_tensors(p)) for p in args.finetuned]
    heads, _ = load_heads(args.heads)
    val = load_benchmark_split(args.data_dirs, args.tasks, "val")
    visual = create_visual(args.model, pre, device())
    size = image_size(args.model)

    def evaluate(delta: StateDict, data: SplitData, head_list=heads) -> dict[str, float]:
        load_visual(visual, apply_delta(pre, delta))
        return evaluate_encoder(visual, data, head_list, size, args.batch_size, device())

    hparams: dict = {}
    if args.method == "consensus":
        lambdas, lambda_scores = [], {}
        for t, task in enumerate(args.tasks):
            own = load_benchmark_split([args.data_dirs[t]], [task], "val")

            def tall_score(lam: float, t: int = t, own: SplitData = own) -> float:
                mask = baselines.tall_mask(tvs, t, lam)
                return evaluate(baselines.tall_mask_model(tvs, mask), own, [heads[t]])[args.tasks[t]]
            lam, lambda_scores[task] = pick(args.lambdas, tall_score, f"lambda {task}")
            lambdas.append(lam)
        hparams.update(lambdas=dict(zip(args.tasks, lambdas, strict=True)), val_accuracy_by_lambda=lambda_scores)
        build = lambda a: baselines.consensus(tvs, lambdas, a, args.min_agreement)  # noqa: E731
    elif args.method == "weight_averaging":
        build = lambda a: baselines.weight_average(tvs)  # noqa: E731
    elif args.method == "task_arithmetic":
        build = lambda a: baselines.task_arithmetic(tvs, a)  # noqa: E731
    elif args.method == "iso_c":
        build = lambda a: baselines.iso_c(tvs, a)  # noqa: E731
    else:
        build = lambda a: baselines.iso_cts(tvs, a, args.common_fraction)  # noqa: E731

    grid = args.alphas if args.method != "weight_averaging" else [1.0]
    alpha, scores = pick(grid, lambda a: float(np.mean(list(evaluate(build(a), val).values()))), args.method)
    hparams.update({"alpha": alpha, "val_mean_accuracy_by_alpha": scores, "selected_on": "val"})
    merged = build(alpha)
    test = load_benchmark_split(args.data_dirs, args.tasks, "test")
    write_json(args.out, {"method": args.method, "test": evaluate(merged, test), "val": evaluate(merged, val),
                          "hyperparameters": hparams})


if __name__ == "__main__":
    main()
