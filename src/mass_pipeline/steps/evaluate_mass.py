"""Step evaluate_mass: MASS on a benchmark's test splits with one router, tuned on validation.

Routers: ``proj`` (Algorithm 2 on the TSV-M first pass), ``proj_pre`` (same on the pretrained
first pass), ``nn`` and ``mlp`` (trained on z_l of the validation images: the representation at
the routing location in the first pass's TSV-M model, written by the ``routing_features`` step). The
routing location is the best candidate of the validation sweep. For the projection routers eta
is found by Bayesian optimisation (optuna TPE) on validation accuracy, exactly and without
forward passes per trial: with top-k selection a sample can only end up with its top-1 .. top-k
tasks, so the second pass is run once per m <= k on validation and every eta is a table lookup.
"""

from __future__ import annotations

import numpy as np
import torch

from mass.evaluation import per_task_accuracy
from mass.forward import FirstPassResult, RoutingFeatures, log_images_forwarded
from mass.io import save_arrays
from mass.routing import (
    MLPRouter,
    NearestNeighbourRouter,
    one_hot_selection,
    routing_accuracy_per_task,
    routing_weights,
    select_tasks,
    top_m,
)
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.methods import ROUTERS
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import (
    add_mass_model_args,
    add_routing_location_args,
    benchmark_parser,
    mass_model,
    routing_location,
    setup,
)
from mass_pipeline.tuning import tune_eta


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--router", required=True, choices=list(ROUTERS))
    add_mass_model_args(parser)
    parser.add_argument("--val-first-pass", required=True)
    parser.add_argument("--test-first-pass", required=True)
    parser.add_argument("--routing-features",
                        help="nn / mlp: z_l of val and test (mass_pipeline.steps.routing_features)")
    add_routing_location_args(parser)
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--no-standardize", action="store_true")
    parser.add_argument("--top-k", type=int, required=True)
    parser.add_argument("--eta", required=True, help="a value, or 'auto' for Bayesian search")
    parser.add_argument("--eta-range", nargs=2, type=float, required=True)
    parser.add_argument("--eta-trials", type=int, required=True)
    parser.add_argument("--mlp-hidden", type=int, required=True)
    parser.add_argument("--mlp-epochs", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--routing-out", help="npz of every test sample's selection, top-ranked and true task")
    args = parser.parse_args()
    setup(args)
    tasks, T = args.tasks, len(args.tasks)
    model = mass_model(args)
    fp_val, fp_test = FirstPassResult.load(args.val_first_pass), FirstPassResult.load(args.test_first_pass)
    hparams: dict = {"router": args.router}

    location, val_acc = routing_location(args, fp_val, tasks)
    if val_acc is not None:
        hparams["val_routing_accuracy_at_layer"] = val_acc
    hparams.update(layer=str(location.layer), token=location.token)
    test = load_benchmark_split(args.data_dirs, tasks, "test")
    if not torch.equal(fp_test.task, test.task):
        raise SystemExit(f"{args.test_first_pass} was made for other tasks; rerun the first pass")

    if not ROUTERS[args.router].learned:
        hparams.update(top_k=args.top_k, temperature=args.temperature)

        def weights_of(fp: FirstPassResult) -> torch.Tensor:
            return routing_weights(fp.residuals_at(location), args.temperature, not args.no_standardize)
        w_val, w_test = weights_of(fp_val), weights_of(fp_test)
        if args.eta == "auto":
            val = load_benchmark_split(args.data_dirs, tasks, "val")
            correct_by_m = {}
            for m in range(1, min(args.top_k, T) + 1):
                pred = model.predict(val.images, top_m(w_val, m), args.batch_size, desc=f"val second pass top-{m}")
                correct_by_m[m] = model.is_correct(pred, val.task, val.labels)
            eta, val_mass = tune_eta(w_val, correct_by_m, args.top_k, *args.eta_range, args.eta_trials, args.seed)
            hparams.update(eta=eta, val_accuracy=val_mass, eta_selected_on="val")
        else:
            eta = float(args.eta)
            hparams["eta"] = eta
        selection = select_tasks(w_test, eta, args.top_k)
        routed = fp_test.residuals_at(location).argmin(-1)
    else:  # nn / mlp: trained on z_l of the validation images, the first-pass model's routing-layer input
        if not args.routing_features:
            raise SystemExit(f"--router {args.router} needs --routing-features: z_l from the routing_features step")
        z = RoutingFeatures.load(args.routing_features)
        z.check(args.routing_features, location, {"val": fp_val.task, "test": test.task})
        router = NearestNeighbourRouter().fit(z.z["val"], z.task["val"]) if args.router == "nn" else \
            MLPRouter(z.z["val"].shape[1], T, args.mlp_hidden, seed=args.seed).fit(
                z.z["val"], z.task["val"], epochs=args.mlp_epochs, seed=args.seed)
        routed = router.predict(z.z["test"])
        selection = one_hot_selection(routed, T)
        hparams.update(features="z_l of the first-pass model", trained_on="val")

    pred = model.predict(test.images, selection, args.batch_size, desc="test second pass")
    correct = model.is_correct_published(pred, test.task, test.labels)
    strict = model.is_correct(pred, test.task, test.labels)
    if args.routing_out:
        save_arrays(args.routing_out, selection=selection.bool().numpy(), routed=routed.numpy(), task=test.task.numpy(),
                    tasks=np.array(tasks))
    MethodResult(method=f"mass_{args.router}", test=per_task_accuracy(correct, test), hyperparameters=hparams,
                 test_strict=per_task_accuracy(strict, test),
                 routing_accuracy=routing_accuracy_per_task(routed, test.task, tasks),
                 mean_selected_tasks=float(selection.sum(-1).float().mean()),
                 distinct_task_subsets=int(torch.unique(selection, dim=0).shape[0])).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    main()
