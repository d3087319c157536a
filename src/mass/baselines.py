"""The merging baselines of Table 2, each returning a merged task-vector delta.

All take task vectors (``TaskVector``) in benchmark order and work key by key, so only one
layer of every task is materialised at a time on top of the inputs. ``apply_delta`` in
:mod:`mass.tsv` turns a delta into encoder weights. Scaling coefficients are arguments:
selecting them on validation data is the pipeline's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mass.svd import polar_factor, thin_svd, truncated_svd
from mass.task_vectors import StateDict, TaskVector, is_matrix


def _keys(task_vectors: Sequence[TaskVector]) -> list[str]:
    if not task_vectors:
        raise ValueError("need at least one task vector")
    return list(task_vectors[0].vector)


def _stack(task_vectors: Sequence[TaskVector], key: str) -> torch.Tensor:
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


def tall_mask(task_vectors: Sequence[TaskVector], t: int, lam: float, total: StateDict | None = None) -> StateDict:
    """TALL mask of task t: m_t = 1[|tau_t| > lambda_t |sum_{j != t} tau_j|] (Wang et al., 2024).
    ``total``: :func:`task_sum` of ``task_vectors``, computed here when not given."""
    total = task_sum(task_vectors) if total is None else total
    own = task_vectors[t].vector
    return {k: own[k].float().abs() > lam * (total[k] - own[k].float()).abs() for k in total}


def tall_masks(task_vectors: Sequence[TaskVector], lambdas: Sequence[float],
               total: StateDict | None = None) -> list[StateDict]:
    """Every task's TALL mask, one lambda per task."""
    if len(lambdas) != len(task_vectors):
        raise ValueError("one lambda per task is required")
    total = task_sum(task_vectors) if total is None else total
    return [tall_mask(task_vectors, t, lam, total) for t, lam in enumerate(lambdas)]


def tall_mask_model(task_vectors: Sequence[TaskVector], mask: StateDict, total: StateDict | None = None) -> StateDict:
    """The localised model of one task: its TALL mask applied to the summed task vector."""
    total = task_sum(task_vectors) if total is None else total
    return {k: mask[k] * total[k] for k in total}


def consensus(task_vectors: Sequence[TaskVector], lambdas: Sequence[float], alpha: float,
              min_agreement: int = 2) -> StateDict:
    """Consensus TA: keep the weights that at least ``min_agreement`` TALL masks select,
    then alpha * (mask * sum tau_t). With ``min_agreement`` > T nothing survives: zero-shot."""
    total = task_sum(task_vectors)
    masks = tall_masks(task_vectors, lambdas, total)
    return {k: alpha * (torch.stack([m[k] for m in masks]).sum(0) >= min_agreement) * total[k] for k in total}


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
    TSV-M, with the spectrum flattened to its mean."""
    def merge(stack: torch.Tensor) -> torch.Tensor:
        common, per_task = iso_cts_dimensions(min(stack.shape[1:]), stack.shape[0], common_fraction)
        u, s, v = truncated_svd(stack.sum(0), common)
        us, ss, vs = [u], [s], [v]
        for delta in stack:
            outside = delta - u @ (u.T @ delta)
            ut, st, vt = truncated_svd(outside, per_task)
            us.append(ut), ss.append(st), vs.append(vt)
        u_all, s_all, v_all = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
        return s_all.mean() * (polar_factor(u_all) @ polar_factor(v_all).T)
    return _mean_or_matrix(task_vectors, merge, alpha)
