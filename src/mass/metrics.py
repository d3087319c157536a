"""Accuracy metrics of the paper: absolute, normalised (Eq. 7) and task identification."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def accuracy(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    return float((pred == target).mean()) if len(target) else float("nan")


def normalized_accuracy(merged: Mapping[str, float], finetuned: Mapping[str, float]) -> dict[str, float]:
    """acc(merged, t) / acc(fine-tuned, t) per task."""
    missing = set(merged) - set(finetuned)
    if missing:
        raise KeyError(f"no fine-tuned accuracy for tasks {sorted(missing)}")
    return {t: merged[t] / finetuned[t] for t in merged}


def mean(values: Mapping[str, float]) -> float:
    return float(np.mean(list(values.values())))


def task_identification_accuracy(pred_task: torch.Tensor | np.ndarray,
                                 true_task: torch.Tensor | np.ndarray) -> float:
    """Fraction of inputs whose routed (top-1) task is their own task."""
    return accuracy(pred_task, true_task)
