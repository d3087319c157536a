"""Shared optimisation pieces of the fine-tuning recipe (AdamW, cosine schedule with warm-up,
gradient clipping) used by both demo pretraining and task fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """``steps`` index batches drawn from repeated seeded permutations of ``range(n)``."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        yield order[pos:pos + batch_size]
        pos += batch_size


def set_threads(threads: int) -> None:
    """Honour the rule's ``threads`` so parallel Snakemake jobs do not oversubscribe cores."""
    torch.set_num_threads(max(1, threads))


def default_device() -> str:
    """Where every step computes: the GPU when torch sees one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
