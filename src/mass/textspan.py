"""Decoding task singular vectors into text with TEXTSPAN (Gandelsman et al., ICLR 2024; MASS Sec. 4.3).

What is decoded, per task and routing location: the top-k singular vectors of the task matrix
whose singular vectors span that location's features (the right singular vectors V of the module's
first matrix for a module input, the left ones U of its last matrix for an output; k = floor(r / T),
the routing basis), each scaled by its singular value and mapped into CLIP's joint image-text
space by the image tower's output projection (``visual.proj``, d x e). That gives k vectors in
the joint space: the rows of X (k x e). As in the official MASS interpretation, the final
LayerNorm is not applied (a direction, not an activation, is mapped).

TEXTSPAN over a pool of text embeddings (the same CLIP's text tower, L2-normalised, N x e):

1. restrict every text embedding to the span of the rows of X (orthogonal projection onto it),
   so that only what the singular vectors can express is compared;
2. centre the rows of X (subtract their mean);
3. repeat ``iterations`` times: score every text t by the variance over the rows of X t (the
   projections of the singular vectors onto that text embedding, as restricted in 1, not
   renormalised: a text mostly outside the span scores low); keep the highest-scoring text; remove
   its unit direction u from every row of X (X <- X - X u u^T) and from every remaining text
   embedding (T <- T - T u u^T), so the next pick explains what is left.

The share of X's centred variance each pick removes is recorded with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mass.svd import TaskComponents, components_per_task, thin_svd
from mass.task_vectors import LayerId


@dataclass(frozen=True)
class TextPick:
    """One TEXTSPAN iteration: the text chosen (index into the pool) and the share of the centred
    variance of the decoded vectors its direction removed."""

    index: int
    text: str
    explained: float


def singular_vectors(components: TaskComponents, layer: LayerId, num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing basis of ``layer`` for one task, (D x k) singular vectors and their (k) singular
    values, with k = floor(r / T) of the benchmark."""
    lr = components.matrices.get(layer.basis_key)
    if lr is None:
        raise KeyError(f"the SVD cache has no matrix {layer.basis_key} (layer {layer})")
    k = components_per_task(min(lr.U.shape[0], lr.V.shape[0]), num_tasks)
    vectors = lr.V if layer.io == "in" else lr.U
    return vectors[:, :k].float(), lr.s[:k].float()


def joint_space_directions(vectors: torch.Tensor, values: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Rows s_i v_i^T P: every singular vector (D x k columns), scaled by its singular value, mapped
    through the image tower's output projection P (D x e) into the joint space (k x e)."""
    if vectors.shape[0] != proj.shape[0]:
        raise ValueError(f"singular vectors of dimension {vectors.shape[0]} cannot pass through a {tuple(proj.shape)} "
                         "projection: the routing location must be in the residual stream's width")
    return (vectors * values).T @ proj.float()


@torch.no_grad()
def textspan(directions: torch.Tensor, text_features: torch.Tensor, texts: Sequence[str],
             iterations: int) -> list[TextPick]:
    """TEXTSPAN (see the module docstring) over ``directions`` (k x e) with a pool of text embeddings
    (N x e, one per entry of ``texts``); returns ``iterations`` picks, best first."""
    if len(texts) != text_features.shape[0]:
        raise ValueError(f"{len(texts)} texts but {text_features.shape[0]} text embeddings")
    x = directions.double()
    t = text_features.double()
    # orthonormal basis of the span of the rows of X, then the texts restricted to it
    _, s, vh = thin_svd(x)
    basis = vh[s > s.max() * 1e-10] if s.numel() and s.max() > 0 else vh[:0]
    t = (t @ basis.T) @ basis
    x = x - x.mean(0, keepdim=True)
    total = float((x ** 2).sum())
    picks: list[TextPick] = []
    chosen = torch.zeros(len(texts), dtype=torch.bool)
    for _ in range(min(iterations, len(texts))):
        scores = (x @ t.T).var(0, unbiased=False)
        scores[chosen] = -1.0
        best = int(scores.argmax())
        norm = torch.linalg.vector_norm(t[best])
        if norm <= 1e-12:
            break  # nothing left that any text can explain
        u = t[best] / norm
        along = x @ u
        explained = float((along ** 2).sum()) / total if total > 0 else 0.0
        x = x - along[:, None] * u[None, :]
        t = t - (t @ u)[:, None] * u[None, :]
        chosen[best] = True
        picks.append(TextPick(best, texts[best], explained))
    return picks
