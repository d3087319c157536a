"""MASS second pass with a different task subset per sample, without merged weight copies.

TSV-M over a subset S of tasks gives, per matrix, Delta_S = polar(U_S) diag(s_S) polar(V_S)^T
where U_S, V_S concatenate the tasks' k = floor(r / T) singular vectors. With the Gram matrix
G = U_S^T U_S, polar(U_S) = U_S G^{-1/2}, so

    Delta_S = U_S C_S V_S^T,   C_S = G_U^{-1/2} diag(s_S) G_V^{-1/2}   (|S|k x |S|k).

The Gram blocks U_i^T U_j of all task pairs are computed once, so a subset costs only small
eigendecompositions (its "core" C_S, cached per subset), never an SVD of a tall matrix nor a
dense (m x n) weight. The encoder then runs theta_pre for every sample and adds, per linear
map, the sample's low-rank correction x V_S C_S^T U_S^T: each task's factors multiply only the
samples that selected it, and the per-sample core is one batched matmul. Tensors that are not
matrices (biases, LayerNorms, class embedding, patch conv) are theta_pre + alpha * the mean of
the selected tasks' deltas, applied per sample. The result equals theta_pre + alpha *
TSV-M(selected tasks) evaluated with dense weights (see tests/test_second_pass.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mass.svd import TaskComponents, components_per_task

Subset = tuple[int, ...]


@dataclass
class MatrixFactors:
    """Every task's truncated factors of one matrix and their pairwise Gram matrices."""

    U: torch.Tensor       # (T, m, k)
    s: torch.Tensor       # (T, k)
    V: torch.Tensor       # (T, n, k)
    gram_u: torch.Tensor  # (T k, T k) = U_all^T U_all
    gram_v: torch.Tensor

    @property
    def k(self) -> int:
        return self.s.shape[1]

    def columns(self, subset: Subset) -> torch.Tensor:
        return torch.cat([torch.arange(t * self.k, (t + 1) * self.k) for t in subset]).to(self.s.device)


def inverse_sqrt(gram: torch.Tensor) -> torch.Tensor:
    """G^{-1/2} of a batch of symmetric positive (semi)definite matrices, in float64."""
    w, q = torch.linalg.eigh(gram.double())
    return (q * w.clamp_min(1e-12).rsqrt().unsqueeze(-2)) @ q.mT


class SubsetFactors:
    """Per-task TSV-M factors of every matrix, and the per-subset cores C_S (LRU-cached)."""

    def __init__(self, components: Sequence[TaskComponents], alpha: float = 1.0,
                 device: str | torch.device = "cpu", cache_size: int = 64):
        self.num_tasks, self.alpha, self.device = len(components), alpha, torch.device(device)
        self.matrices: dict[str, MatrixFactors] = {}
        for name, first in components[0].matrices.items():
            k = components_per_task(min(first.U.shape[0], first.V.shape[0]), self.num_tasks)
            parts = [c.matrices[name].truncate(k) for c in components]
            u = torch.stack([p.U for p in parts]).float().to(self.device)
            v = torch.stack([p.V for p in parts]).float().to(self.device)
            flat_u, flat_v = u.transpose(0, 1).flatten(1), v.transpose(0, 1).flatten(1)
            self.matrices[name] = MatrixFactors(u, torch.stack([p.s for p in parts]).float().to(self.device),
                                                v, flat_u.T @ flat_u, flat_v.T @ flat_v)
        self.others = {name: torch.stack([c.others[name].float() for c in components]).to(self.device)
                       for name in components[0].others}
        self.cache: OrderedDict[Subset, dict[str, torch.Tensor]] = OrderedDict()
        self.cache_size = cache_size

    def cores(self, subset: Subset) -> dict[str, torch.Tensor]:
        """alpha * C_S for every matrix; the eigendecompositions of same-sized Gram matrices are batched."""
        if subset in self.cache:
            self.cache.move_to_end(subset)
            return self.cache[subset]
        cores = {}
        if len(subset) == 1:  # a task's own U, V are orthonormal already: C = diag(s)
            cores = {name: torch.diag(f.s[subset[0]]) * self.alpha for name, f in self.matrices.items()}
        else:
            by_k: dict[int, list[str]] = {}
            for name, f in self.matrices.items():
                by_k.setdefault(f.k, []).append(name)
            for names in by_k.values():
                cols = self.matrices[names[0]].columns(subset)
                gu = inverse_sqrt(torch.stack([self.matrices[n].gram_u[cols][:, cols] for n in names]))
                gv = inverse_sqrt(torch.stack([self.matrices[n].gram_v[cols][:, cols] for n in names]))
                s = torch.stack([self.matrices[n].s[list(subset)].flatten() for n in names]).double()
                core = (gu * s.unsqueeze(-2)) @ gv * self.alpha
                cores.update(zip(names, core.float(), strict=True))
        self.cache[subset] = cores
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return cores


@dataclass
class BatchPlan:
    """Where each task's factors go in a batch: the samples that selected it and its slot there."""

    rows: list[torch.Tensor]     # per task: indices of the samples that selected it
    slots: list[torch.Tensor]    # per task: its position among each such sample's sorted tasks
    width: int                   # largest number of tasks a sample selected
    mean: torch.Tensor           # (N, T): alpha / |S_n| on the selected tasks, for non-matrix tensors
    members: list[torch.Tensor]  # per distinct subset in the batch: its samples
    cores: list[dict[str, torch.Tensor]]  # per distinct subset: alpha * C_S of every matrix

    @classmethod
    def build(cls, selection: torch.Tensor, factors: SubsetFactors) -> BatchPlan:
        selection = selection.bool().to(factors.device)
        unique, subset_of = torch.unique(selection, dim=0, return_inverse=True)
        subsets = [tuple(int(i) for i in torch.nonzero(row).flatten()) for row in unique]
        slot = selection.long().cumsum(1) - 1
        rows = [torch.nonzero(selection[:, t]).flatten() for t in range(factors.num_tasks)]
        return cls(rows, [slot[r, t] for t, r in enumerate(rows)], max(len(s) for s in subsets),
                   selection.float() * factors.alpha / selection.sum(1, keepdim=True),
                   [torch.nonzero(subset_of == g).flatten() for g in range(len(subsets))],
                   [factors.cores(s) for s in subsets])


def check_supported(visual: nn.Module) -> None:
    """The per-sample forward re-implements open_clip's standard ViT image tower only."""
    blocks = visual.transformer.resblocks
    plain = (getattr(visual, "attn_pool", None) is None and visual.pool_type == "tok"
             and not visual.final_ln_after_pool and isinstance(visual.patch_dropout, nn.Identity)
             and isinstance(visual.ln_pre, nn.LayerNorm) and visual.transformer.batch_first
             and all(isinstance(b.ls_1, nn.Identity) and isinstance(b.ls_2, nn.Identity)
                     and isinstance(b.attn, nn.MultiheadAttention) for b in blocks))
    if not plain:
        raise ValueError("the per-sample MASS forward supports open_clip ViTs with CLS pooling, "
                         "no layer scale and no attentional pooler")


class MixedEncoder:
    """The image tower at theta_pre + alpha * TSV-M(S_n), with its own task subset S_n per sample."""

    def __init__(self, visual: nn.Module, pretrained: Mapping[str, torch.Tensor], factors: SubsetFactors):
        check_supported(visual)
        self.visual, self.factors = visual, factors
        self.pre = {k: v.float().to(factors.device) for k, v in pretrained.items()}

    def _lowrank(self, x: torch.Tensor, name: str, plan: BatchPlan, transposed: bool = False) -> torch.Tensor:
        """Per-sample x Delta_S^T (linear weights) or, ``transposed``, x Delta_S (``proj``)."""
        f = self.factors.matrices[name]
        inp, out = (f.U, f.V) if transposed else (f.V, f.U)
        n, length = x.shape[:2]
        coords = x.new_zeros(n, length, plan.width, f.k)
        for t, (rows, slots) in enumerate(zip(plan.rows, plan.slots, strict=True)):
            if len(rows):
                coords[rows, :, slots] = x[rows] @ inp[t]
        coords, mixed = coords.flatten(2), torch.empty_like(coords).flatten(2)
        for members, cores in zip(plan.members, plan.cores, strict=True):
            core = cores[name] if transposed else cores[name].T
            r = core.shape[0]
            mixed[members, :, :r] = coords[members, :, :r] @ core
        mixed = mixed.view(n, length, plan.width, f.k)
        result = x.new_zeros(n, length, out.shape[1])
        for t, (rows, slots) in enumerate(zip(plan.rows, plan.slots, strict=True)):
            if len(rows):
                result.index_add_(0, rows, mixed[rows, :, slots] @ out[t].T)
        return result

    def _vector(self, name: str, plan: BatchPlan) -> torch.Tensor:
        """Per-sample non-matrix tensor: theta_pre + alpha * mean of the selected tasks' deltas."""
        return self.pre[name] + plan.mean @ self.factors.others[name]

    def _linear(self, x: torch.Tensor, prefix: str, plan: BatchPlan, weight: str = "weight",
                bias: str = "bias") -> torch.Tensor:
        w = f"{prefix}.{weight}"
        return (F.linear(x, self.pre[w]) + self._vector(f"{prefix}.{bias}", plan)[:, None]
                + self._lowrank(x, w, plan))

    def _layer_norm(self, x: torch.Tensor, prefix: str, plan: BatchPlan, eps: float) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[-1:], eps=eps)
        return x * self._vector(f"{prefix}.weight", plan)[:, None] + self._vector(f"{prefix}.bias", plan)[:, None]

    def _embed(self, images: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        conv = self.visual.conv1
        x = conv(images)
        delta = self.factors.others["conv1.weight"]
        for t, rows in enumerate(plan.rows):
            if len(rows):
                patch = F.conv2d(images[rows], delta[t], stride=conv.stride)
                x.index_add_(0, rows, patch * plan.mean[rows, t, None, None, None])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self._vector("class_embedding", plan)[:, None], x], 1)
        positions = torch.eye(x.shape[1], device=x.device).expand(len(x), -1, -1)  # Delta = I Delta
        pos_delta = self._lowrank(positions, "positional_embedding", plan, transposed=True)
        return x + self.pre["positional_embedding"] + pos_delta

    def _attention(self, x: torch.Tensor, prefix: str, heads: int, plan: BatchPlan) -> torch.Tensor:
        n, length, width = x.shape
        qkv = self._linear(x, prefix, plan, "in_proj_weight", "in_proj_bias")
        q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, width)
        return self._linear(y, f"{prefix}.out_proj", plan)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        visual = self.visual
        x = self._layer_norm(self._embed(images, plan), "ln_pre", plan, visual.ln_pre.eps)
        for i, block in enumerate(visual.transformer.resblocks):
            p = f"transformer.resblocks.{i}"
            h = self._layer_norm(x, f"{p}.ln_1", plan, block.ln_1.eps)
            x = x + self._attention(h, f"{p}.attn", block.attn.num_heads, plan)
            h = self._layer_norm(x, f"{p}.ln_2", plan, block.ln_2.eps)
            h = block.mlp.gelu(self._linear(h, f"{p}.mlp.c_fc", plan))
            x = x + self._linear(h, f"{p}.mlp.c_proj", plan)
        pooled = self._layer_norm(x[:, :1], "ln_post", plan, visual.ln_post.eps)
        return (pooled @ self.pre["proj"] + self._lowrank(pooled, "proj", plan, transposed=True))[:, 0]
