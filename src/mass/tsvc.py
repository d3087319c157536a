"""TSV-C (Gargiulo et al., 2025): each task stored as the rank-k truncation of its own task matrices.

A task's compressed update keeps, per task matrix (m x n, rank r = min(m, n)), its top k singular
triplets; every non-matrix tensor of the task vector (biases, LayerNorms, class embedding, patch
conv) is kept in full. The model of task t is ``theta_pre + alpha * delta_t``, evaluated with
task t's own head. Two choices of k are used:

- ``benchmark``: k = floor(r / T), the share of the rank each task gets in TSV-M. This is exactly
  MASS's second pass when the router selects the true task alone (a one-task TSV-M merge is that
  task's rank-k truncation, its non-matrix tensors averaged over one task), so its accuracy is
  the ceiling MASS reaches with an oracle router;
- ``size``: per matrix the largest k whose stored factors (k (m + n + 1) numbers) take at most a
  given fraction (the TSV paper's 10%) of the m n numbers of the dense matrix (at least 1).

The stored size fraction of a compressed task vector counts every number stored (factors of the
matrices, non-matrix tensors in full) over the numbers of the dense task vector.
"""

from __future__ import annotations

from collections.abc import Mapping

from mass.svd import LowRank, TaskComponents, components_per_task
from mass.task_vectors import StateDict

SETTINGS = ("benchmark", "size")


def matrix_shape(lr: LowRank) -> tuple[int, int]:
    """(m, n) of the dense matrix ``U diag(s) V^T`` a stored factorisation stands for."""
    return int(lr.U.shape[0]), int(lr.V.shape[0])


def rank_for_size(m: int, n: int, fraction: float) -> int:
    """Largest k >= 1 with k (m + n + 1) <= fraction * m * n: the rank whose factors fit the size budget."""
    if not 0 < fraction <= 1:
        raise ValueError(f"size fraction must be in (0, 1], got {fraction}")
    return max(1, min(min(m, n), int(fraction * m * n // (m + n + 1))))


def benchmark_ranks(components: TaskComponents, num_tasks: int) -> dict[str, int]:
    """k = floor(r / T) for every task matrix: what MASS and TSV-M keep of each task."""
    return {name: components_per_task(min(matrix_shape(lr)), num_tasks) for name, lr in components.matrices.items()}


def size_ranks(components: TaskComponents, fraction: float) -> dict[str, int]:
    """Per task matrix, the rank whose factors take at most ``fraction`` of the dense matrix."""
    return {name: rank_for_size(*matrix_shape(lr), fraction) for name, lr in components.matrices.items()}


def ranks_for(setting: str, components: TaskComponents, num_tasks: int, fraction: float) -> dict[str, int]:
    """The ranks of one TSV-C ``setting`` (``benchmark`` or ``size``)."""
    if setting == "benchmark":
        return benchmark_ranks(components, num_tasks)
    if setting == "size":
        return size_ranks(components, fraction)
    raise ValueError(f"unknown TSV-C setting {setting!r}; expected one of {SETTINGS}")


def compressed_delta(components: TaskComponents, ranks: Mapping[str, int]) -> StateDict:
    """The task's compressed update: rank-``ranks[name]`` truncation of every task matrix (dense),
    non-matrix tensors in full. Raises (naming ``svd.rank_fraction``) when the cache holds fewer
    components than asked for."""
    delta: StateDict = {name: lr.truncate(ranks[name]).dense() for name, lr in components.matrices.items()}
    delta.update({name: t.float() for name, t in components.others.items()})
    return delta


def stored_fraction(components: TaskComponents, ranks: Mapping[str, int]) -> float:
    """Numbers stored by the compressed task vector over the numbers of the dense task vector."""
    others = sum(t.numel() for t in components.others.values())
    stored, dense = others, others
    for name, lr in components.matrices.items():
        m, n = matrix_shape(lr)
        stored += ranks[name] * (m + n + 1)
        dense += m * n
    return stored / dense


def rank_summary(ranks: Mapping[str, int]) -> dict[str, int]:
    """Smallest and largest rank over the task matrices (for the record)."""
    values = list(ranks.values())
    return {"min_rank": min(values), "max_rank": max(values)} if values else {}

