"""Pipeline step: MASS on a benchmark's test splits with one router, tuned on validation.

Routers: ``proj`` (Algorithm 2 on the TSV-M first pass), ``proj_pre`` (same on the pretrained
first pass), ``nn`` and ``mlp`` (trained on z_l of the validation images: the representation at
the routing location in the first pass's TSV-M model, read from ``mass.routing_features``). The
routing location is the best candidate of the validation sweep. For the projection routers eta
is found by Bayesian optimisation (optuna TPE) on validation accuracy, exactly and without
forward passes per trial: with top-k selection a sample can only end up with its top-1 .. top-k
tasks, so the second pass is run once per m <= k on validation and every eta is a table lookup.
"""

from __future__ import annotations

import numpy as np
import optuna
import torch

from mass.benchmark import (
    FirstPassResult,
    RoutingFeatures,
    SplitData,
    add_mass_model_args,
    common_parser,
    load_benchmark_split,
    mass_model,
    setup,
)
from mass.io import save_arrays, write_json
from mass.routing import (
    MLPRouter,
    NearestNeighbourRouter,
    one_hot_selection,
    routing_weights,
    select_tasks,
    top1_accuracy_per_task,
)
from mass.routing_sweep import add_routing_location_args, routing_location

ROUTERS = ("proj", "proj_pre", "nn", "mlp")


def per_task_accuracy(correct: torch.Tensor, data: SplitData) -> dict[str, float]:
    return {name: float(correct[data.indices_of(t)].float().mean()) for t, name in enumerate(data.task_names)}


def top_m(weights: torch.Tensor, m: int) -> torch.Tensor:
    """The m highest-weighted tasks of every sample."""
    return torch.zeros_like(weights, dtype=torch.bool).scatter_(-1, weights.topk(m, -1).indices, True)


def selection_size(weights: torch.Tensor, eta: float, top_k: int) -> torch.Tensor:
    """How many tasks ``select_tasks`` keeps per sample (its choices are always the top ones)."""
    return select_tasks(weights, eta, top_k).sum(-1)


def tune_eta(weights: torch.Tensor, correct_by_m: dict[int, torch.Tensor], top_k: int, low: float, high: float,
             trials: int, seed: int) -> tuple[float, float]:
    """Eta maximising mean-over-samples validation accuracy (TPE, seeded)."""
    def accuracy(eta: float) -> float:
        sizes = selection_size(weights, eta, top_k)
        correct = torch.zeros(len(sizes), dtype=torch.bool)
        for m, ok in correct_by_m.items():
            correct |= (sizes == m) & ok
        return float(correct.float().mean())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda trial: accuracy(trial.suggest_float("eta", low, high)), n_trials=trials)
    return float(study.best_params["eta"]), float(study.best_value)


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, choices=ROUTERS)
    add_mass_model_args(parser)
    parser.add_argument("--val-first-pass", required=True)
    parser.add_argument("--test-first-pass", required=True)
    parser.add_argument("--routing-features", help="nn / mlp: z_l of val and test (mass.routing_features)")
    add_routing_location_args(parser)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--no-standardize", action="store_true")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--eta", default="auto", help="a value, or 'auto' for Bayesian search")
    parser.add_argument("--eta-range", nargs=2, type=float, default=[0.05, 0.5])
    parser.add_argument("--eta-trials", type=int, default=30)
    parser.add_argument("--mlp-hidden", type=int, default=1024)
    parser.add_argument("--mlp-epochs", type=int, default=20)
    parser.add_argument("--out", required=True)
    parser.add_argument("--routing-out", help="npz of every test sample's selection, top-ranked and true task")
    args = parser.parse_args()
    setup(args)
    tasks, T = args.tasks, len(args.tasks)
    model = mass_model(args)
    fp_val, fp_test = FirstPassResult.load(args.val_first_pass), FirstPassResult.load(args.test_first_pass)
    hparams: dict = {"router": args.router}

    layer, val_acc = routing_location(args, fp_val, tasks)
    if val_acc is not None:
        hparams["val_routing_accuracy_at_layer"] = val_acc
    hparams.update(layer=layer, token=args.token)
    test = load_benchmark_split(args.data_dirs, tasks, "test")
    if not torch.equal(fp_test.task, test.task):
        raise SystemExit(f"{args.test_first_pass} was made for other tasks; rerun the first pass")

    if args.router in ("proj", "proj_pre"):
        key = f"{layer}.{args.token}"
        hparams.update(top_k=args.top_k, temperature=args.temperature)

        def weights_of(fp: FirstPassResult) -> torch.Tensor:
            return routing_weights(fp.residuals_at(key), args.temperature, not args.no_standardize)
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
        routed = fp_test.residuals_at(key).argmin(-1)
    else:  # nn / mlp: trained on z_l of the validation images, the first-pass model's routing-layer input
        if not args.routing_features:
            raise SystemExit(f"--router {args.router} needs --routing-features: z_l from mass.routing_features")
        z = RoutingFeatures.load(args.routing_features)
        z.check(args.routing_features, layer, args.token, {"val": fp_val.task, "test": test.task})
        router = NearestNeighbourRouter().fit(z.z["val"], z.task["val"]) if args.router == "nn" else \
            MLPRouter(z.z["val"].shape[1], T, args.mlp_hidden, seed=args.seed).fit(
                z.z["val"], z.task["val"], epochs=args.mlp_epochs, seed=args.seed)
        routed = router.predict(z.z["test"])
        selection = one_hot_selection(routed, T)
        hparams.update(features="z_l of the first-pass model", trained_on="val")

    pred = model.predict(test.images, selection, args.batch_size, desc="test second pass")
    correct = model.is_correct(pred, test.task, test.labels)
    one_hot = torch.nn.functional.one_hot(routed, T).float()
    if args.routing_out:
        save_arrays(args.routing_out, selection=selection.bool().numpy(), routed=routed.numpy(), task=test.task.numpy(),
                    tasks=np.array(tasks))
    write_json(args.out, {
        "method": f"mass_{args.router}", "test": per_task_accuracy(correct, test),
        "routing_accuracy": top1_accuracy_per_task(-one_hot, test.task, tasks),
        "mean_selected_tasks": float(selection.sum(-1).float().mean()),
        "distinct_task_subsets": int(torch.unique(selection, dim=0).shape[0]),
        "hyperparameters": hparams})


if __name__ == "__main__":
    main()
