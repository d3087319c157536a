"""What a method costs at inference: multiply-adds counted by torch, wall time against a plain forward in
one run, and the parameters it keeps against the pretrained encoder.

Used by the pipeline's ``measure_cost`` step (accuracy against cost, per backbone and benchmark) and by
``benchmarks/run.py``. Multiply-adds come from :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts the matrix products, convolutions and attention of a call (FLOPs / 2); elementwise work is not
counted. The floor of exact per-sample merging (:func:`exact_merge_macs`) is computed from the shapes, k and
the selections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mass.svd import TaskComponents, components_per_task


# torch's registry counts addmm and baddbmm but not their in-place forms, which MASS's low-rank path adds
# its corrections with (second_pass.lowrank_update): counted by the same formulas.
def _addmm_flop(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[-2] * a_shape[-1] * b_shape[-1] * (a_shape[0] if len(a_shape) == 3 else 1)


IN_PLACE = {torch.ops.aten.addmm_: _addmm_flop, torch.ops.aten.baddbmm_: _addmm_flop}


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-adds of the matrix products, convolutions and attention ``fn`` runs (torch's count / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=IN_PLACE) as counter:
        fn()
    return counter.get_total_flops() // 2


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work, so a wall-clock time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_times(steps: Mapping[str, Callable[[], object]], repeats: int,
               device: torch.device | str = "cpu") -> dict[str, float]:
    """Each step's best wall time over ``repeats`` rounds, every step once per round: interleaved, so ratios
    between steps compare runs taken under the same machine load."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                step()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _tensors(obj: object) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)


def held_parameters(*objects: object) -> int:
    """Numbers held by modules (parameters, buffers and tensors kept as attributes, e.g. SMILE's experts),
    state dicts, dataclasses of tensors or lists of them; a storage shared by several tensors counts once."""
    seen: dict[tuple[int, int], int] = {}
    for obj in objects:
        found = []
        if isinstance(obj, nn.Module):
            for module in obj.modules():
                found += [t for value in vars(module).values() if not isinstance(value, nn.Module)
                          for t in _tensors(value)]
        else:
            found += list(_tensors(obj))
        for t in found:
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            seen[key] = max(seen.get(key, 0), t.numel())
    return sum(seen.values())


def mass_parameters(pretrained: Mapping[str, torch.Tensor], components: Sequence[TaskComponents]) -> int:
    """What MASS stores: theta_pre and, per task, k = floor(r / T) singular triplets (U, s, V columns) of every
    task matrix plus the dense difference of every other tensor (biases, LayerNorms, embeddings)."""
    T = len(components)
    kept = sum(components_per_task(min(lr.U.shape[0], lr.V.shape[0]), T) * (lr.U.shape[0] + lr.V.shape[0] + 1)
               for c in components for lr in c.matrices.values())
    others = sum(t.numel() for c in components for t in c.others.values())
    return held_parameters(dict(pretrained)) + kept + others


def exact_merge_macs(components: Sequence[TaskComponents], selection: torch.Tensor,
                     tokens: Mapping[str, int]) -> int:
    """Multiply-adds that exact per-sample TSV-M merging must add to a forward, at its cheapest: the floor of
    the second pass over a plain forward.

    Per task matrix (m x n, k = floor(r / T) components per task), a subset S of s = |S| tasks chosen by g
    samples (``selection``, N x T booleans) is applied either per sample as x -> U_S A_U diag(s) A_V V_S^T x,
    s k (m + n) + 2 (s k)^2 per token of ``tokens[name]`` tokens per sample, or once as dense weights
    (U_S A_U) diag(s) (A_V V_S^T), s k (m n + (m + n) s k) for the group; the floor takes the cheaper of the
    two per subset and matrix. A single task's factors are orthonormal already: no A_U, A_V (s = 1 costs
    k (m + n) per token, or m n k). Matrices absent from ``tokens`` are not counted."""
    T = len(components)
    subsets, counts = torch.unique(selection.bool(), dim=0, return_counts=True)
    total = 0
    for name, lr in components[0].matrices.items():
        if name not in tokens:
            continue
        m, n = lr.U.shape[0], lr.V.shape[0]
        k = components_per_task(min(m, n), T)
        for size, group in zip(subsets.sum(1).tolist(), counts.tolist(), strict=True):
            sk, cores = size * k, size > 1
            total += min(group * tokens[name] * (sk * (m + n) + cores * 2 * sk ** 2),
                         sk * m * n + cores * (m + n) * sk ** 2)
    return total


def tokens_per_matrix(visual: nn.Module, image_size: int) -> dict[str, int]:
    """Tokens of one image that each task matrix of an open_clip image tower multiplies: every patch for the
    patch embedding, the whole sequence for the blocks' projections, the pooled token for ``proj``."""
    patch = visual.conv1.kernel_size[0]
    patches = (image_size // patch) ** 2
    out = {"conv1.weight": patches, "proj": 1}
    for i in range(len(visual.transformer.resblocks)):
        p = f"transformer.resblocks.{i}"
        for name in ("attn.in_proj_weight", "attn.in_proj_q.weight", "attn.in_proj_k.weight",
                     "attn.in_proj_v.weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
            out[f"{p}.{name}"] = patches + 1
    return out
