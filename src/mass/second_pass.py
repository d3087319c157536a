"""MASS second pass, each sample with its own task subset: dense or per-sample low-rank weights.

TSV-M over a subset S of tasks gives, per matrix, Delta_S = polar(U_S) diag(s_S) polar(V_S)^T
where U_S, V_S concatenate the tasks' k = floor(r / T) singular vectors. With the Gram matrix
G = U_S^T U_S, polar(U_S) = U_S A_U with A_U = G_U^{-1/2}, so

    Delta_S = U_S A_U diag(s_S) A_V V_S^T        (A_U, A_V: |S|k x |S|k, symmetric).

The Gram blocks U_i^T U_j of all task pairs are computed once, in float64, so a subset costs
only small float64 eigendecompositions (its :class:`Core`, cached per subset), never an SVD of
a tall matrix. A and the spectrum stay separate factors: their product grows like
1 / sigma_min(U_S) sigma_min(V_S) where tasks share directions (MNIST / EMNIST), and rounding
it to float32 would cost that much accuracy; applied one after the other, every intermediate
is bounded by 1 / sigma_min and the merge is as accurate as the plain algorithm (thin SVD of
U_S, P Q^T) in float32 (tests/unit/test_second_pass.py checks near-duplicate tasks and T k = r).

A subset shared by many inputs gets dense weights theta_pre + polar(U_S) diag(s_S) polar(V_S)^T
written into the encoder (:meth:`MixedEncoder.write_weights`). A batch mixing rare subsets is
sorted by subset and runs theta_pre plus, per linear map, each sample's low-rank correction
x V_S A_V diag(s_S) A_U U_S^T: x V_t is one matmul per task over all samples that selected t,
then per subset group two small matmuls by A_V and A_U and one addmm per task into the output
slice. Biases, LayerNorms and the class embedding are theta_pre + alpha * the mean of the
selected tasks' deltas per sample; the patch conv and positional embedding are merged per
group. The result equals theta_pre + alpha * TSV-M(selected tasks) evaluated with dense weights
(see tests/unit/test_second_pass.py), with attention's q, k and v merged as one matrix or as three,
as the components are laid out (:meth:`mass.svd.TaskComponents.for_attention`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mass.svd import TaskComponents, components_per_task, polar_factor
from mass.task_vectors import is_in_proj, qkv_names, split_attention

Subset = tuple[int, ...]


@dataclass
class MatrixFactors:
    """Every task's truncated factors of one matrix and their pairwise Gram matrices."""

    U: torch.Tensor       # (T, m, k)
    s: torch.Tensor       # (T, k)
    V: torch.Tensor       # (T, n, k)
    gram_u: torch.Tensor  # (T k, T k) = U_all^T U_all, float64
    gram_v: torch.Tensor

    @property
    def k(self) -> int:
        return self.s.shape[1]

    def uses_full_rank(self, subset: Subset) -> bool:
        """|S| k = r: the subset's smaller factor is square (T k = r and every task selected)."""
        return len(subset) * self.k == min(self.U.shape[1], self.V.shape[1])

    def columns(self, subset: Subset) -> torch.Tensor:
        return torch.cat([torch.arange(t * self.k, (t + 1) * self.k) for t in subset]).to(self.s.device)


def gram(factors: torch.Tensor) -> torch.Tensor:
    """Float64 Gram matrix of the tasks' (T, m, k) factors side by side: (T k, T k).

    Float64 because polar factors are built from it: a float32 Gram loses sigma_min^2 of U_S
    to rounding, which is all of it for tasks that share directions.
    """
    flat = factors.transpose(0, 1).flatten(1).double()
    return flat.T @ flat


@dataclass
class Core:
    """One subset's TSV-M merge of one matrix, in the factors it is applied with:
    alpha * Delta_S = U_S a_u diag(s) a_v V_S^T. ``a_u`` and ``a_v`` (G^{-1/2}, symmetric) are
    None for a single task, whose own U and V are orthonormal already."""

    a_u: torch.Tensor | None
    s: torch.Tensor  # alpha * s_S, (|S| k,)
    a_v: torch.Tensor | None


def inverse_sqrt(gram: torch.Tensor) -> torch.Tensor:
    """G^{-1/2} of a batch of symmetric positive (semi)definite matrices, in float64."""
    w, q = torch.linalg.eigh(gram.double())
    return (q * w.clamp_min(1e-12).rsqrt().unsqueeze(-2)) @ q.mT


class SubsetFactors:
    """Per-task TSV-M factors of every matrix, and each subset's :class:`Core` of every matrix (LRU-cached)."""

    def __init__(self, components: Sequence[TaskComponents], alpha: float = 1.0,
                 device: str | torch.device = "cpu", cache_size: int = 64):
        self.num_tasks, self.alpha, self.device = len(components), alpha, torch.device(device)
        self.matrices: dict[str, MatrixFactors] = {}
        for name, first in components[0].matrices.items():
            k = components_per_task(min(first.U.shape[0], first.V.shape[0]), self.num_tasks)
            parts = [c.matrices[name].truncate(k) for c in components]
            u = torch.stack([p.U for p in parts]).float().to(self.device)
            v = torch.stack([p.V for p in parts]).float().to(self.device)
            self.matrices[name] = MatrixFactors(u, torch.stack([p.s for p in parts]).float().to(self.device),
                                                v, gram(u), gram(v))
        self.others = {name: torch.stack([c.others[name].float() for c in components]).to(self.device)
                       for name in components[0].others}
        self.cache: OrderedDict[Subset, dict[str, Core]] = OrderedDict()
        self.cache_size = cache_size

    def cores(self, subset: Subset) -> dict[str, Core]:
        """The :class:`Core` of every matrix; the eigendecompositions of same-sized Gram matrices are batched."""
        if subset in self.cache:
            self.cache.move_to_end(subset)
            return self.cache[subset]
        cores = {}
        if len(subset) == 1:
            cores = {name: Core(None, f.s[subset[0]] * self.alpha, None) for name, f in self.matrices.items()}
        else:
            by_k: dict[int, list[str]] = {}
            for name, f in self.matrices.items():
                by_k.setdefault(f.k, []).append(name)
            for names in by_k.values():
                cols = self.matrices[names[0]].columns(subset)
                a_u = inverse_sqrt(torch.stack([self.matrices[n].gram_u[cols][:, cols] for n in names])).float()
                a_v = inverse_sqrt(torch.stack([self.matrices[n].gram_v[cols][:, cols] for n in names])).float()
                for i, n in enumerate(names):
                    cores[n] = Core(a_u[i], self.matrices[n].s[list(subset)].flatten() * self.alpha, a_v[i])
        self.cache[subset] = cores
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return cores

    def uses_full_rank(self, subset: Subset) -> bool:
        """Whether any matrix's subset factors are square (see :meth:`delta`)."""
        return any(f.uses_full_rank(subset) for f in self.matrices.values())

    def delta(self, name: str, subset: Subset) -> torch.Tensor:
        """alpha * Delta_S = polar(U_S) diag(alpha s_S) polar(V_S)^T of one matrix, dense.

        Where the subset uses the matrix's full rank, its square factor's polar factor is far
        better conditioned (2 / (sigma_min + sigma_next)) than U_S G^{-1/2} can reproduce in
        float32 (1 / sigma_min), so both come from thin SVDs, as in TSV-M itself.
        """
        f, core = self.matrices[name], self.cores(subset)[name]
        u, v = (factor[list(subset)].transpose(0, 1).flatten(1) for factor in (f.U, f.V))
        if f.uses_full_rank(subset):
            u, v = polar_factor(u), polar_factor(v)
        elif core.a_u is not None:
            u, v = u @ core.a_u, v @ core.a_v
        return (u * core.s) @ v.T


@dataclass
class Group:
    """Consecutive samples of a batch sorted by subset that share one task subset."""

    rows: slice
    subset: Subset
    offsets: list[int]  # per task of the subset: where the group starts among that task's samples
    cores: dict[str, Core]  # of every matrix


@dataclass
class BatchPlan:
    """A batch sorted by task subset, so every subset's samples form one contiguous slice.

    Contiguous groups let the low-rank corrections be added in place with one matmul per task
    and group (no scatter of per-sample results), and the patch conv run once per group with
    its merged kernel.
    """

    order: torch.Tensor  # batch position of each sorted sample
    groups: list[Group]
    rows: list[torch.Tensor]  # per task: the sorted samples that selected it
    mean: torch.Tensor   # (N, T), sorted: alpha / |S_n| on the selected tasks, for non-matrix tensors

    @classmethod
    def build(cls, selection: torch.Tensor, factors: SubsetFactors) -> BatchPlan:
        selection = selection.bool().to(factors.device)
        unique, subset_of = torch.unique(selection, dim=0, return_inverse=True)
        order = torch.argsort(subset_of, stable=True)
        selection = selection[order]
        before = (selection.long().cumsum(0) - selection.long()).tolist()  # per sample and task
        groups, start = [], 0
        for row, count in zip(unique, torch.bincount(subset_of).tolist(), strict=True):
            subset = tuple(torch.nonzero(row).flatten().tolist())
            if factors.uses_full_rank(subset):
                raise ValueError(f"task subset {subset} uses the full rank of a matrix; its low-rank update would "
                                 "lose accuracy: run it with dense weights (MixedEncoder.write_weights)")
            groups.append(Group(slice(start, start + count), subset, [before[start][t] for t in subset],
                                factors.cores(subset)))
            start += count
        rows = [torch.nonzero(column).flatten() for column in selection.T]
        return cls(order, groups, rows, selection.float() * factors.alpha / selection.sum(1, keepdim=True))


def lowrank_update(y: torch.Tensor, x: torch.Tensor, factors: SubsetFactors, name: str, plan: BatchPlan,
                   transposed: bool = False) -> torch.Tensor:
    """Adds to ``y``, in place, each sample's x Delta_S^T (linear weights) or, ``transposed``,
    x Delta_S (``proj``); ``x`` and ``y`` are (N, L, .), contiguous and sorted as ``plan``."""
    f = factors.matrices[name]
    inp, out = (f.U, f.V) if transposed else (f.V, f.U)
    coords = [(x if len(rows) == len(x) else x.index_select(0, rows)) @ inp[t] if len(rows) else None
              for t, rows in enumerate(plan.rows)]  # one matmul per task over all its samples
    for g in plan.groups:
        size, ys = g.rows.stop - g.rows.start, y[g.rows].flatten(0, 1)
        core = g.cores[name]
        a_in, a_out = (core.a_u, core.a_v) if transposed else (core.a_v, core.a_u)
        mixed = torch.cat([coords[t][o:o + size] for t, o in zip(g.subset, g.offsets, strict=True)],
                          -1).flatten(0, 1)
        mixed = mixed * core.s if a_in is None else torch.mm(mixed @ a_in, a_out * core.s[:, None])
        for j, t in enumerate(g.subset):
            ys.addmm_(mixed[:, j * f.k:(j + 1) * f.k], out[t].T)
    return y


def check_supported(visual: nn.Module) -> None:
    """The per-sample forward re-implements open_clip's standard ViT image tower only."""
    blocks = visual.transformer.resblocks
    plain = (getattr(visual, "attn_pool", None) is None and visual.pool_type == "tok"
             and not visual.final_ln_after_pool and isinstance(visual.patch_dropout, nn.Identity)
             and isinstance(visual.ln_pre, nn.LayerNorm) and visual.transformer.batch_first
             and visual.conv1.bias is None
             and all(isinstance(b.ls_1, nn.Identity) and isinstance(b.ls_2, nn.Identity)
                     and isinstance(b.attn, nn.MultiheadAttention) for b in blocks))
    if not plain:
        raise ValueError("the per-sample MASS forward supports open_clip ViTs with CLS pooling, "
                         "no layer scale and no attentional pooler")


class MixedEncoder:
    """The image tower at theta_pre + alpha * TSV-M(S_n), with its own task subset S_n per sample.

    :meth:`__call__` runs a batch mixing subsets (low-rank corrections on theta_pre);
    :meth:`write_weights` instead puts one subset's dense merged weights into ``visual`` itself,
    which is cheaper when many samples share that subset (see :class:`mass.mass_model.MassModel`).
    """

    def __init__(self, visual: nn.Module, pretrained: Mapping[str, torch.Tensor], factors: SubsetFactors):
        check_supported(visual)
        self.visual, self.factors = visual, factors
        self.pre = {k: v.float().to(factors.device) for k, v in pretrained.items()}
        self.pre.update(split_attention({k: v for k, v in self.pre.items() if is_in_proj(k)}))  # views

    def merged(self, name: str, subset: Subset) -> torch.Tensor:
        """theta_pre + alpha * TSV-M(subset) of one tensor, dense: one matmul chain for a matrix (three,
        concatenated, for an ``in_proj_weight`` merged as q, k and v blocks)."""
        if is_in_proj(name) and name not in self.factors.matrices and qkv_names(name)[0] in self.factors.matrices:
            return torch.cat([self.merged(block, subset) for block in qkv_names(name)])
        if name in self.factors.matrices:
            return self.pre[name] + self.factors.delta(name, subset)
        if name in self.factors.others:
            merged = self.pre[name].clone()  # in-place adds of views: no gather of the task deltas
            for t in subset:
                merged.add_(self.factors.others[name][t], alpha=self.factors.alpha / len(subset))
            return merged
        return self.pre[name]

    @torch.no_grad()
    def write_weights(self, subset: Subset | None) -> None:
        """Copy the merged weights of ``subset`` (theta_pre for None) into ``visual``'s parameters."""
        for name, param in self.visual.named_parameters():
            param.copy_(self.pre[name] if subset is None else self.merged(name, subset))

    def _vector(self, name: str, plan: BatchPlan) -> torch.Tensor:
        """Per-sample non-matrix tensor: theta_pre + alpha * mean of the selected tasks' deltas."""
        return self.pre[name] + plan.mean @ self.factors.others[name]

    def _linear(self, x: torch.Tensor, weight: str, bias: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        """x W^T + b per sample: theta_pre's ``weight``, each sample's low-rank update and bias (N, out)."""
        y = F.linear(x, self.pre[weight]).add_(bias[:, None])
        return lowrank_update(y, x.contiguous(), self.factors, weight, plan)

    def _module(self, x: torch.Tensor, prefix: str, plan: BatchPlan) -> torch.Tensor:
        """A linear module (``prefix``.weight and .bias) under each sample's merge."""
        return self._linear(x, f"{prefix}.weight", self._vector(f"{prefix}.bias", plan), plan)

    def _layer_norm(self, x: torch.Tensor, prefix: str, plan: BatchPlan, eps: float) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[-1:], eps=eps)
        return torch.addcmul(self._vector(f"{prefix}.bias", plan)[:, None], x,
                             self._vector(f"{prefix}.weight", plan)[:, None])

    def _embed(self, images: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        """Patch conv and positional embedding merged per group (each costs one dense tensor)."""
        stride = self.visual.conv1.stride
        x = torch.cat([F.conv2d(images[g.rows], self.merged("conv1.weight", g.subset), stride=stride)
                       for g in plan.groups])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self._vector("class_embedding", plan)[:, None], x], 1)
        return x + torch.cat([self.merged("positional_embedding", g.subset).expand(g.rows.stop - g.rows.start,
                                                                                   -1, -1)
                              for g in plan.groups])

    def _attention(self, x: torch.Tensor, prefix: str, heads: int, plan: BatchPlan) -> torch.Tensor:
        """Multi-head self-attention; its input projection merged whole or as q, k and v blocks, as the
        factors hold it."""
        n, length, width = x.shape
        weight, bias = f"{prefix}.in_proj_weight", self._vector(f"{prefix}.in_proj_bias", plan)
        if weight in self.factors.matrices:
            qkv = self._linear(x, weight, bias, plan).view(n, length, 3, width)
        else:
            qkv = torch.stack([self._linear(x, w, b, plan) for w, b in zip(qkv_names(weight), bias.chunk(3, -1),
                                                                             strict=True)], 2)
        q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, width)
        return self._module(y, f"{prefix}.out_proj", plan)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        """Features of ``images`` in their batch order."""
        visual = self.visual
        x = self._layer_norm(self._embed(images[plan.order], plan), "ln_pre", plan, visual.ln_pre.eps)
        for i, block in enumerate(visual.transformer.resblocks):
            p = f"transformer.resblocks.{i}"
            h = self._layer_norm(x, f"{p}.ln_1", plan, block.ln_1.eps)
            x = x + self._attention(h, f"{p}.attn", block.attn.num_heads, plan)
            h = self._layer_norm(x, f"{p}.ln_2", plan, block.ln_2.eps)
            h = block.mlp.gelu(self._module(h, f"{p}.mlp.c_fc", plan))
            x = x + self._module(h, f"{p}.mlp.c_proj", plan)
        pooled = self._layer_norm(x[:, :1], "ln_post", plan, visual.ln_post.eps).contiguous()
        feats = lowrank_update(pooled @ self.pre["proj"], pooled, self.factors, "proj", plan, transposed=True)[:, 0]
        return torch.empty_like(feats).index_copy_(0, plan.order, feats)
