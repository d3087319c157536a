"""The merging baselines of Table 2, each returning a merged task-vector delta.

All take task vectors (``TaskVector``) in benchmark order and work key by key, so only one
layer of every task is materialised at a time on top of the inputs; given as
:class:`~mass.task_vectors.TaskVectorFiles`, the inputs stay on disk too, and a merge holds
theta_pre, one layer of every task (or one task) and its result, whatever T. ``apply_delta`` in
:mod:`mass.tsv` turns a delta into encoder weights. Scaling coefficients are arguments:
selecting them on validation data is the pipeline's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mass.svd import polar_factor, thin_svd, truncated_svd
from mass.task_vectors import StateDict, TaskVector, TaskVectorFiles, is_matrix


def _keys(task_vectors: Sequence[TaskVector]) -> list[str]:
    if not len(task_vectors):
        raise ValueError("need at least one task vector")
    if isinstance(task_vectors, TaskVectorFiles):
        return list(task_vectors.keys)
    return list(task_vectors[0].vector)


def _stack(task_vectors: Sequence[TaskVector], key: str) -> torch.Tensor:
    """One tensor of every task, (T, ...): read from each file alone for :class:`TaskVectorFiles`."""
    if isinstance(task_vectors, TaskVectorFiles):
        return task_vectors.stack(key)
    return torch.stack([tv.vector[key].float() for tv in task_vectors])


def weight_average(task_vectors: Sequence[TaskVector]) -> StateDict:
    """theta_0 + (1/T) sum tau_t, i.e. the mean task vector."""
    return {k: _stack(task_vectors, k).mean(0) for k in _keys(task_vectors)}


def task_arithmetic(task_vectors: Sequence[TaskVector], alpha: float) -> StateDict:
    """alpha * sum tau_t (Ilharco et al., 2023)."""
    return {k: alpha * _stack(task_vectors, k).sum(0) for k in _keys(task_vectors)}


def task_sum(task_vectors: Sequence[TaskVector]) -> StateDict:
    """sum_t tau_t, key by key: what every TALL mask measures against. Compute it once and pass it
    to :func:`tall_mask` and :func:`tall_mask_model`: each would otherwise re-sum all T task vectors,
    T^2 passes over the weights for T masks (minutes for 20 tasks even at ViT-B/32)."""
    return {k: _stack(task_vectors, k).sum(0) for k in _keys(task_vectors)}


def tall_mask(own: TaskVector, total: StateDict, lam: float) -> StateDict:
    """TALL mask of one task: m_t = 1[|tau_t| > lambda_t |sum_{j != t} tau_j|] (Wang et al., 2024), from
    its task vector ``own`` and ``total``, the :func:`task_sum` of all of them."""
    return {k: own.vector[k].float().abs() > lam * (total[k] - own.vector[k].float()).abs() for k in total}


def tall_masks(task_vectors: Sequence[TaskVector], lambdas: Sequence[float],
               total: StateDict | None = None) -> list[StateDict]:
    """Every task's TALL mask, one lambda per task (all T held at once: for inspection, not for merging)."""
    if len(lambdas) != len(task_vectors):
        raise ValueError("one lambda per task is required")
    total = task_sum(task_vectors) if total is None else total
    return [tall_mask(task_vectors[t], total, lam) for t, lam in enumerate(lambdas)]


def tall_mask_model(mask: StateDict, total: StateDict) -> StateDict:
    """The localised model of one task: its TALL mask applied to the summed task vector."""
    return {k: mask[k] * total[k] for k in total}


def consensus(task_vectors: Sequence[TaskVector], lambdas: Sequence[float], alpha: float,
              min_agreement: int = 2) -> StateDict:
    """Consensus TA: keep the weights that at least ``min_agreement`` TALL masks select,
    then alpha * (mask * sum tau_t). With ``min_agreement`` > T nothing survives: zero-shot.

    The agreement is counted as a running sum, each task's mask added and dropped in turn, so the
    peak is a few copies of the model whatever T (with :class:`TaskVectorFiles`, one task vector at a
    time); the result is the count of all masks at once, bit for bit."""
    if len(lambdas) != len(task_vectors):
        raise ValueError("one lambda per task is required")
    total = task_sum(task_vectors)
    agreement = {k: torch.zeros(v.shape, dtype=torch.int16) for k, v in total.items()}
    for t, lam in enumerate(lambdas):
        for k, selected in tall_mask(task_vectors[t], total, lam).items():
            agreement[k] += selected
    return {k: alpha * (agreement[k] >= min_agreement) * total[k] for k in total}


def _mean_or_matrix(task_vectors: Sequence[TaskVector], per_matrix, alpha: float) -> StateDict:
    """alpha * (``per_matrix(stack)`` on task matrices, the mean of every other tensor).

    alpha scales the averaged tensors too, as both published Iso implementations do (they
    multiply the whole merged update by the scaling factor).
    """
    merged: StateDict = {}
    for key in _keys(task_vectors):
        stack = _stack(task_vectors, key)
        merged[key] = alpha * (per_matrix(stack) if is_matrix(key, stack[0]) else stack.mean(0))
    return merged


def iso_c(task_vectors: Sequence[TaskVector], alpha: float) -> StateDict:
    """Iso-C (Marczak et al., 2025): per matrix, flatten the spectrum of sum_t Delta_t to its mean."""
    def flatten(stack: torch.Tensor) -> torch.Tensor:
        u, s, vh = thin_svd(stack.sum(0))
        return s.mean() * (u @ vh)
    return _mean_or_matrix(task_vectors, flatten, alpha)


def iso_cts_dimensions(rank: int, num_tasks: int, common_fraction: float) -> tuple[int, int]:
    """(common subspace size, per-task size) of Iso-CTS for a matrix of rank ``rank``.

    The published code gives each task round((r - int(f r)) / T) directions (Python's round,
    half to even) and the common subspace the rest, r - T p. The cap at floor(r / T) only keeps
    the common size non-negative for tiny matrices, where the published rule would fail.
    """
    per_task = min(rank // num_tasks, round((rank - int(rank * common_fraction)) / num_tasks))
    return rank - per_task * num_tasks, per_task


def iso_cts(task_vectors: Sequence[TaskVector], alpha: float, common_fraction: float = 0.8) -> StateDict:
    """Iso-CTS: a common subspace (the top directions of the summed matrix, sized by
    :func:`iso_cts_dimensions`) plus each task's top directions outside it, orthogonalised as in
    TSV-M, with the spectrum flattened to its mean.

    For a matrix with m <= n (attention out_proj, MLP c_proj) the part of a task's matrix outside the
    common subspace is ``rest rest^T delta``, ``rest`` the other m - common left singular vectors of the
    sum, so its top directions come from the SVD of the (m - common) x n matrix ``rest^T delta`` (160 x n
    instead of 768 x n at ViT-B with T = 20): the same update up to round-off, ~5x cheaper for those
    matrices. Taller matrices keep the direct projection (their complement is not smaller)."""
    def merge(stack: torch.Tensor) -> torch.Tensor:
        m, n = stack.shape[1:]
        common, per_task = iso_cts_dimensions(min(m, n), stack.shape[0], common_fraction)
        if m <= n:  # the sum's SVD gives a whole basis of R^m: its last m - common columns span the complement
            basis, s, v = truncated_svd(stack.sum(0), m)
            u, s, v, rest = basis[:, :common], s[:common], v[:, :common], basis[:, common:]
        else:
            u, s, v = truncated_svd(stack.sum(0), common)
        us, ss, vs = [u], [s], [v]
        for delta in stack:
            if m <= n:  # delta outside the common subspace is rest rest^T delta: decompose the (m - common) x n part
                small, st, vt = truncated_svd(rest.T @ delta, per_task)
                ut = rest @ small
            else:
                ut, st, vt = truncated_svd(delta - u @ (u.T @ delta), per_task)
            us.append(ut), ss.append(st), vs.append(vt)
        u_all, s_all, v_all = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
        return s_all.mean() * (polar_factor(u_all) @ polar_factor(v_all).T)
    return _mean_or_matrix(task_vectors, merge, alpha)
