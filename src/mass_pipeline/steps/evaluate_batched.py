"""Step evaluate_batched: batched MASS (Fig. 6): one routing decision per batch drawn from one task.

Each task's test samples are cut into consecutive batches; a batch is routed to the top-1
task of its mean residuals at the routing location chosen by the per-sample MASS step, and
classified by theta_pre + TSV-M(that task).
"""

from __future__ import annotations

import torch

from mass.evaluation import per_task_accuracy
from mass.forward import FirstPassResult, log_images_forwarded
from mass.routing import batched_route, one_hot_selection, routing_accuracy_per_task
from mass.task_vectors import LayerId, Location
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import add_mass_model_args, benchmark_parser, mass_model, setup


def main() -> None:
    parser = benchmark_parser(__doc__)
    add_mass_model_args(parser)
    parser.add_argument("--test-first-pass", required=True)
    parser.add_argument("--mass-result", required=True, help="per-sample MASS result JSON (routing layer)")
    parser.add_argument("--route-batch-size", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    hp = MethodResult.load(args.mass_result).hyperparameters
    location = Location(LayerId.parse(hp["layer"]), hp["token"])
    fp = FirstPassResult.load(args.test_first_pass)
    residuals, T = fp.residuals_at(location), len(args.tasks)
    routed = torch.empty(len(fp.task), dtype=torch.long)
    for t in range(T):
        idx = torch.nonzero(fp.task == t).flatten()
        for chunk in torch.split(idx, args.route_batch_size):
            routed[chunk] = batched_route(residuals[chunk])
    model = mass_model(args)
    test = load_benchmark_split(args.data_dirs, args.tasks, "test")
    pred = model.predict(test.images, one_hot_selection(routed, T), args.batch_size, desc="batched second pass")
    correct = model.is_correct_published(pred, test.task, test.labels)
    MethodResult(method="mass_batched", test=per_task_accuracy(correct, test),
                 test_strict=per_task_accuracy(model.is_correct(pred, test.task, test.labels), test),
                 routing_accuracy=routing_accuracy_per_task(routed, test.task, args.tasks),
                 hyperparameters={"layer": hp["layer"], "token": hp["token"], "alpha": args.alpha,
                                  "route_batch_size": args.route_batch_size}).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    main()
