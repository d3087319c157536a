"""SMILE (Tang et al., 2024) as the final edition's code builds it: every linear layer of the image tower
a sparse mixture of low-rank experts, evaluated without knowing the task of an image.

Per linear layer (weight W_0, m x n, bias b_0) and task t with Delta_t = W_t - W_0 = U_t S_t V_t^T:

- gate: g_t(x) = || V_{t,:gate_k}^T x ||_2 (right singular vectors only, no singular values), softmax
  over the tasks, the ``top_k`` largest kept and renormalised to sum to one;
- expert t: x -> U_{t,:k} S_{t,:k} V_{t,:k}^T x + (b_t - b_0);
- output: W_0 x + b_0 + sum over the kept tasks of w_t expert_t(x).

Routing is per token. The linear layers are attention's input projection (whole, or q, k and v as the
components are laid out: :meth:`mass.svd.TaskComponents.for_attention`), its ``out_proj``, and the
MLP's ``c_fc`` and ``c_proj``; everything else (LayerNorms, patch embedding, class and positional
embeddings, the output projection) stays pretrained (``average_experts: false`` in the final code). The
experts come from the pipeline's SVD cache, which holds enough components when k <= r * rank_fraction.

Head choice (smile.py @ 702177e with smile_gates.py @ 110dead): each layer fed by the residual stream's
tokens (attention's input projections, ``c_fc``, ``c_proj``) votes, per image, for the top-1 expert its
tokens chose most often; the image's head is the most frequent vote over those layers (``torch.mode``:
ties go to the lower task index, as in the final code on CPU). ``out_proj`` routes but casts no vote,
as in that code. The final code's vote cannot run with top_k > 1 (its ``view(L, B)`` of the selected
experts fails); here the vote reads each token's first (highest-weighted) expert, so any top_k runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mass.forward import encode
from mass.second_pass import check_supported
from mass.svd import LowRank, TaskComponents
from mass.task_vectors import StateDict, qkv_names


@dataclass
class Experts:
    """One linear layer's gate and experts over T tasks."""

    gate: torch.Tensor               # (T * gate_k, n): each task's first gate_k right singular vectors, as rows
    down: torch.Tensor               # (T, k, n): S_k V_k^T
    up: torch.Tensor                 # (T, m, k): U_k
    bias: torch.Tensor               # (T, m): b_t - b_0

    @classmethod
    def from_factors(cls, factors: Sequence[LowRank], biases: Sequence[torch.Tensor], gate_k: int, k: int,
                     device: str | torch.device = "cpu") -> Experts:
        """From each task's stored SVD of Delta_t (at least max(gate_k, k) components) and bias difference."""
        gate = torch.cat([f.truncate(gate_k).V.T for f in factors])
        kept = [f.truncate(k) for f in factors]
        parts = (gate, torch.stack([(f.V * f.s).T for f in kept]), torch.stack([f.U for f in kept]),
                 torch.stack(list(biases)))
        return cls(*(t.float().to(device) for t in parts))

    @property
    def num_tasks(self) -> int:
        return self.up.shape[0]


class SmileLinear(nn.Module):
    """A pretrained linear layer plus its sparse mixture of low-rank experts, routed per token.

    With ``votes`` set, each forward keeps every token's top-1 expert in :attr:`chosen` (shape of the
    input without its last axis) for the head vote."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, experts: Experts, top_k: int, votes: bool):
        super().__init__()
        if not 1 <= top_k <= experts.num_tasks:
            raise ValueError(f"top_k must be between 1 and the number of tasks ({experts.num_tasks}), not {top_k}")
        self.weight, self.bias, self.experts, self.top_k, self.votes = weight, bias, experts, top_k, votes
        self.chosen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.experts
        out = F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        scores = F.linear(flat, e.gate).view(len(flat), e.num_tasks, -1).norm(dim=2)
        weights, chosen = torch.softmax(scores, dim=1).topk(self.top_k, dim=1)
        weights = weights / weights.sum(1, keepdim=True)
        mixed = torch.zeros(len(flat), out.shape[-1], dtype=out.dtype, device=out.device)
        for t in range(e.num_tasks):
            rows, slot = torch.nonzero(chosen == t, as_tuple=True)
            if len(rows):
                y = torch.addmm(e.bias[t], flat[rows] @ e.down[t].T, e.up[t].T)
                mixed.index_add_(0, rows, y * weights[rows, slot, None])
        if self.votes:
            self.chosen = chosen[:, 0].view(x.shape[:-1])
        return out + mixed.view(out.shape)


class SmileAttention(nn.Module):
    """Self-attention of open_clip's image tower with SMILE input projections (one, or q, k and v) and
    ``out_proj``; called as the ``nn.MultiheadAttention`` it replaces (batch first, no mask needed)."""

    def __init__(self, attention: nn.MultiheadAttention, projections: Sequence[SmileLinear], out_proj: SmileLinear):
        super().__init__()
        self.num_heads, self.batch_first = attention.num_heads, attention.batch_first
        self.projections, self.out_proj = nn.ModuleList(projections), out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query:
            raise ValueError("SMILE's attention supports self-attention only (the image tower's)")
        x = query if self.batch_first else query.transpose(0, 1)
        n, length, width = x.shape
        qkv = torch.cat([p(x) for p in self.projections], -1)
        q, k, v = qkv.view(n, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(n, length, width)
        out = self.out_proj(y)
        return (out if self.batch_first else out.transpose(0, 1)), None


class SmileModel:
    """The image tower with every linear layer upscaled to SMILE experts over T tasks, and the head vote.

    Built in place on ``visual`` (which must hold theta_pre): pass a fresh tower."""

    def __init__(self, visual: nn.Module, pretrained: StateDict, components: Sequence[TaskComponents],
                 gate_k: int, k: int, top_k: int, device: str | torch.device = "cpu"):
        check_supported(visual)
        self.visual, self.device, self.num_tasks = visual.to(device), device, len(components)
        self.voters: list[SmileLinear] = []

        def layer(name: str, weight: torch.Tensor, bias: torch.Tensor, bias_deltas: Sequence[torch.Tensor],
                  votes: bool = True) -> SmileLinear:
            experts = Experts.from_factors([c.matrices[name] for c in components], bias_deltas, gate_k, k, device)
            module = SmileLinear(weight.float().to(device), bias.float().to(device), experts, top_k, votes)
            if votes:
                self.voters.append(module)
            return module

        def linear(prefix: str, votes: bool = True) -> SmileLinear:
            bias = f"{prefix}.bias"
            return layer(f"{prefix}.weight", pretrained[f"{prefix}.weight"], pretrained[bias],
                         [c.others[bias] for c in components], votes)

        for i, block in enumerate(visual.transformer.resblocks):
            p = f"transformer.resblocks.{i}"
            in_proj, bias = f"{p}.attn.in_proj_weight", f"{p}.attn.in_proj_bias"
            if in_proj in components[0].matrices:
                projections = [layer(in_proj, pretrained[in_proj], pretrained[bias],
                                     [c.others[bias] for c in components])]
            else:  # q, k and v: their rows of the whole weight and bias
                projections = [layer(name, pretrained[in_proj].chunk(3)[j], pretrained[bias].chunk(3)[j],
                                     [c.others[bias].chunk(3)[j] for c in components])
                               for j, name in enumerate(qkv_names(in_proj))]
            block.attn = SmileAttention(block.attn, projections, linear(f"{p}.attn.out_proj", votes=False))
            block.mlp.c_fc = linear(f"{p}.mlp.c_fc")
            block.mlp.c_proj = linear(f"{p}.mlp.c_proj")
        self.visual.eval()

    def head_vote(self) -> torch.Tensor:
        """Each image's head from the last forward: per voting layer the mode over tokens of the top-1
        experts, then the mode over layers."""
        per_layer = torch.stack([m.chosen.mode(dim=1).values for m in self.voters])  # (layers, N)
        return per_layer.mode(dim=0).values

    def pop(self) -> dict[str, torch.Tensor]:
        """The last batch's voted heads, for :func:`mass.forward.encode`."""
        return {"head": self.head_vote().cpu()}

    def predict(self, images: np.ndarray, image_size: int, batch_size: int = 256, workers: int | None = None,
                desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N x d) and the voted head (N) of every image."""
        features, recorded = encode(self.visual, images, image_size, batch_size, self.device, workers, desc, self)
        return features, recorded["head"]
