"""The MASS threshold eta chosen on validation, by Bayesian optimisation (optuna, the pipeline extra).

It lives in the pipeline, not in :mod:`mass.routing`: the routers need only torch, and a library user
picks eta as they like (``mass.routing.select_tasks`` takes it as a number).
"""

from __future__ import annotations

import optuna
import torch

from mass.routing import selection_size


def tune_eta(weights: torch.Tensor, correct_by_m: dict[int, torch.Tensor], top_k: int, low: float, high: float,
             trials: int, seed: int) -> tuple[float, float]:
    """Eta maximising mean-over-samples validation accuracy, by Bayesian optimisation (optuna TPE, seeded).

    Exact and without forward passes per trial: with top-k selection a sample can only end up with
    its top-1 .. top-k tasks, so ``correct_by_m[m]`` (each sample's outcome with its top m tasks,
    one second pass per m) turns every eta into a table lookup.
    """
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
