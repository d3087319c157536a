"""Scoring shared by every evaluation: per-task accuracy (oracle heads, or given per-sample outcomes)
and the choice of a hyperparameter from its grid on validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mass.data.store import SplitData
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


def correct_strict(head: torch.Tensor, cls: torch.Tensor, true_task: torch.Tensor, labels: torch.Tensor,
                   head_names: Sequence[str]) -> torch.Tensor:
    """Per sample: the chosen head is the true task's head (tasks sharing a head, like STL10 and CIFAR10 in
    the first edition, count as one) and the class read from it is the label."""
    names = np.asarray(head_names)
    return torch.from_numpy(names[head.numpy()] == names[true_task.numpy()]) & (cls == labels)


def correct_published(features: torch.Tensor, heads: Sequence[torch.Tensor], head: torch.Tensor,
                      true_task: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, as both editions' code scores a routed prediction: the chosen head's logits cut to, or
    zero-padded up to, the true task's class count (:func:`fit_to_classes`), their argmax against the label.
    Where the chosen head is the true one this is :func:`correct_strict`; a wrong head can also hit, when
    the index it picks among the first classes equals the label."""
    correct = torch.empty(len(labels), dtype=torch.bool)
    for chosen, task in torch.unique(torch.stack([head, true_task], 1), dim=0).tolist():
        idx = torch.nonzero((head == chosen) & (true_task == task)).flatten()
        logits = fit_to_classes(head_logits(features[idx], heads[chosen]), heads[task].shape[0])
        correct[idx] = logits.argmax(1) == labels[idx]
    return correct


def voted_head_scores(features: torch.Tensor, head: torch.Tensor, heads: Sequence[torch.Tensor],
                      head_names: Sequence[str], data: SplitData) -> dict[str, dict[str, float]]:
    """Per-task scores of a method that picks each image's head itself (SMILE's and WEMoE's vote): the
    published scoring (``test``), the strict one (``test_strict``, the class the chosen head's own classes
    give) and how often the head is the image's own task (``routing_accuracy``)."""
    cls = torch.empty_like(head)
    for h in head.unique().tolist():
        rows = torch.nonzero(head == h).flatten()
        cls[rows] = head_logits(features[rows], heads[h]).argmax(1)
    return {"test": per_task_accuracy(correct_published(features, heads, head, data.task, data.labels), data),
            "test_strict": per_task_accuracy(correct_strict(head, cls, data.task, data.labels, head_names), data),
            "routing_accuracy": per_task_accuracy(head == data.task, data)}


def per_task_accuracy(correct: torch.Tensor, data: SplitData) -> dict[str, float]:
    """Mean of a per-sample outcome (a correct prediction, a correct routing) over each task's samples."""
    return {name: float(correct[data.indices_of(t)].float().mean()) for t, name in enumerate(data.task_names)}


def pick_best(grid: Sequence[float], score: Callable[[float], float],
              desc: str | None = None) -> tuple[float, dict[str, float]]:
    """The grid value with the highest score, the first one on ties, and every value's score (keyed by str)."""
    scores = {str(v): score(v) for v in tqdm(grid, desc=desc, disable=desc is None, leave=False)}
    best = max(grid, key=lambda v: (scores[str(v)], -list(grid).index(v)))
    return best, scores
