"""Oracle-head evaluation shared by the baseline, endpoint and TSV-M steps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mass.benchmark import SplitData
from mass.heads import head_logits
from mass.inference import encode


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
