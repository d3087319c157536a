"""TSV-M (Gargiulo et al., 2025) with the epsilon filter of MASS Algorithm 1.

Per task matrix: keep k = floor(r / T) singular triplets per task, concatenate them side by
side, replace the concatenated U and V by their polar factors (the nearest matrices with
orthonormal columns) and rebuild ``U_perp diag(s) V_perp^T``. Tensors that are not matrices are
averaged. Attention's q, k and v are one matrix or three, as the components are laid out
(:meth:`mass.svd.TaskComponents.for_attention`). The epsilon filter drops, per layer, a task whose
truncated task matrix has cosine similarity > epsilon with an already accepted one, so
near-duplicate tasks (MNIST / EMNIST) do not dominate the routing subspaces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mass.svd import LowRank, TaskComponents, components_per_task, polar_factor
from mass.task_vectors import StateDict, join_attention, visual_state_dict


def tsv_merge_matrix(parts: Sequence[LowRank]) -> torch.Tensor:
    """Merge already-truncated low-rank task matrices: U_perp diag(s) V_perp^T."""
    u = torch.cat([p.U for p in parts], dim=1)
    s = torch.cat([p.s for p in parts])
    v = torch.cat([p.V for p in parts], dim=1)
    return (polar_factor(u) * s) @ polar_factor(v).T


def truncated_cosine(a: LowRank, b: LowRank) -> float:
    """Cosine similarity of the flattened matrices A = U_a S_a V_a^T and B, without forming them.

    <A, B>_F = sum_ij s_a[i] s_b[j] (u_a_i . u_b_j)(v_a_i . v_b_j) and ||A||_F = ||s_a|| because
    the singular vectors are orthonormal.
    """
    inner = (a.s[:, None] * (a.U.T @ b.U) * (a.V.T @ b.V) * b.s[None, :]).sum()
    denom = torch.linalg.vector_norm(a.s) * torch.linalg.vector_norm(b.s)
    return float(inner / denom) if denom > 0 else 0.0


def epsilon_filter(parts: Sequence[LowRank], epsilon: float) -> list[int]:
    """Indices of the tasks kept by Algorithm 1, lines 2-8, walking ``parts`` in benchmark order.

    The first task seeds the accepted set; a later task is accepted only if its cosine
    similarity with every accepted task is <= epsilon.
    """
    accepted: list[int] = []
    for i, part in enumerate(parts):
        if all(truncated_cosine(part, parts[j]) <= epsilon for j in accepted):
            accepted.append(i)
    return accepted


def tsv_merge(tasks: Sequence[TaskComponents], num_tasks: int | None = None,
              epsilon: float | None = None, device: str | torch.device = "cpu",
              ) -> tuple[StateDict, dict[str, list[int]]]:
    """TSV-M merged update Delta over a set of tasks, optionally epsilon-filtered per layer.

    ``num_tasks`` is the benchmark size T that sets k = floor(r / T) (defaults to
    ``len(tasks)``; MASS's second pass merges a subset but keeps the benchmark's k).
    Returns the merged delta state dict and, per matrix, the indices of the accepted tasks. Tasks laid
    out with attention's q, k and v as three matrices (:meth:`TaskComponents.for_attention`) are merged
    block by block (k = floor(D / T) each) and the delta joins the blocks back into ``in_proj_weight``.
    """
    if not tasks:
        raise ValueError("tsv_merge needs at least one task")
    num_tasks = num_tasks or len(tasks)
    delta: StateDict = {}
    accepted: dict[str, list[int]] = {}
    for name in tasks[0].matrices:
        full = tasks[0].matrices[name]
        k = components_per_task(min(full.U.shape[0], full.V.shape[0]), num_tasks)
        parts = [t.matrices[name].truncate(k) for t in tasks]
        parts = [LowRank(p.U.to(device), p.s.to(device), p.V.to(device)) for p in parts]
        keep = list(range(len(parts))) if epsilon is None else epsilon_filter(parts, epsilon)
        accepted[name] = keep
        delta[name] = tsv_merge_matrix([parts[i] for i in keep]).cpu()
    for name in tasks[0].others:
        delta[name] = torch.stack([t.others[name].float() for t in tasks]).mean(0)
    return join_attention(delta), accepted


def apply_delta(pretrained: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor],
                alpha: float = 1.0) -> StateDict:
    """``theta_pre + alpha * delta`` over the image encoder; keys absent from delta are copied."""
    pre = visual_state_dict(pretrained)
    return {k: (v + alpha * delta[k].to(v.dtype).to(v.device)) if k in delta else v.clone()
            for k, v in pre.items()}
