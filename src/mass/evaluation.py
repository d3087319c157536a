"""Scoring shared by every evaluation: per-task accuracy (oracle heads, or given per-sample outcomes)
and the choice of a hyperparameter from its grid on validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from mass.data.benchmark import SplitData
from mass.forward import encode
from mass.heads import head_logits


def accuracy_with_oracle_heads(features: torch.Tensor, data: SplitData,
                               heads: Sequence[torch.Tensor]) -> dict[str, float]:
    """Per-task accuracy when each sample is classified by its own task's head (task known)."""
    out = {}
    for t, name in enumerate(data.task_names):
        idx = data.indices_of(t)
        pred = head_logits(features[idx], heads[t]).argmax(1)
        out[name] = float((pred == data.labels[idx]).float().mean())
    return out


def evaluate_encoder(visual: nn.Module, data: SplitData, heads: Sequence[torch.Tensor], image_size: int,
                     batch_size: int, device: str, desc: str | None = None) -> dict[str, float]:
    features, _ = encode(visual, data.images, image_size, batch_size, device, desc=desc)
    return accuracy_with_oracle_heads(features, data, heads)


def fit_to_classes(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``logits`` (N x C) cut to their first ``num_classes`` columns, or padded with zeros up to them:
    how both editions' code (``pad_output`` in ``src/mass/utils/utils.py`` of crisostomi/mass at
    583b35e and 702177e) fits the chosen head's output to the evaluated task's class count."""
    if logits.shape[1] >= num_classes:
        return logits[:, :num_classes]
    return torch.cat([logits, logits.new_zeros(logits.shape[0], num_classes - logits.shape[1])], dim=1)


def per_task_accuracy(correct: torch.Tensor, data: SplitData) -> dict[str, float]:
    """Mean of a per-sample outcome (a correct prediction, a correct routing) over each task's samples."""
    return {name: float(correct[data.indices_of(t)].float().mean()) for t, name in enumerate(data.task_names)}


def pick_best(grid: Sequence[float], score: Callable[[float], float],
              desc: str | None = None) -> tuple[float, dict[str, float]]:
    """The grid value with the highest score, the first one on ties, and every value's score (keyed by str)."""
    scores = {str(v): score(v) for v in tqdm(grid, desc=desc, disable=desc is None, leave=False)}
    best = max(grid, key=lambda v: (scores[str(v)], -list(grid).index(v)))
    return best, scores
