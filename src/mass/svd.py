"""Truncated SVDs of task matrices and the per-task SVD cache that every benchmark reuses.

TSV-M keeps k = floor(r / T) components per task and matrix. The cache stores
``k_max = floor(r * rank_fraction)`` components once (rank_fraction = 1 / smallest benchmark
size), so the 8-, 14- and 20-task benchmarks all slice the same file instead of recomputing.

The cache may be stored in half precision (``svd.storage_dtype``: the singular vectors and the
dense deltas of the other tensors in float16 or bfloat16, the singular values in float32); every
reader gets float32 tensors (:meth:`TaskComponents.load` upcasts), so all compute stays float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from mass.io import check_holds, load_tensors, save_tensors, verify
from mass.task_vectors import (
    ATTENTION_LAYOUTS,
    StateDict,
    TaskVector,
    is_in_proj,
    is_matrix,
    qkv_names,
    split_attention,
)
from mass.training import default_device

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def storage_dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a ``svd.storage_dtype`` value, or ValueError naming the allowed ones."""
    try:
        return STORAGE_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown storage dtype {name!r}; one of {sorted(STORAGE_DTYPES)}") from None


@dataclass
class LowRank:
    """``U diag(s) V^T`` with ``U`` (m x k), ``s`` (k), ``V`` (n x k); columns sorted by ``s``."""

    U: torch.Tensor
    s: torch.Tensor
    V: torch.Tensor

    @property
    def rank(self) -> int:
        return self.s.numel()

    def truncate(self, k: int) -> LowRank:
        if k > self.rank:
            raise ValueError(f"asked for {k} components but only {self.rank} are stored; "
                             "rebuild the SVD cache with a larger rank_fraction")
        return LowRank(self.U[:, :k], self.s[:k], self.V[:, :k])

    def dense(self) -> torch.Tensor:
        return (self.U * self.s) @ self.V.T


def components_per_task(full_rank: int, num_tasks: int) -> int:
    """k = floor(r / T): the share of the rank each task gets in TSV-M."""
    if num_tasks < 1:
        raise ValueError("num_tasks must be >= 1")
    return full_rank // num_tasks


def thin_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(x, full_matrices=False)``, recomputed in float64 where it fails to converge.

    On CPU torch calls MKL's divide-and-conquer SVD, whose float32 version can fail on a matrix that
    is not hard at all: the dress rehearsal met a 768 x 768 Iso-CTS basis of condition number 2.3e3
    that MKL's float64, OpenBLAS (numpy) and scipy's gesdd and gesvd all decompose. The published
    code ran on GPUs (cuSOLVER) and never saw this. Where float32 converges the result is unchanged;
    where it does not, the float64 factors are rounded back to the input's dtype.
    """
    try:
        return torch.linalg.svd(x, full_matrices=False)
    except torch.linalg.LinAlgError:
        u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
        return u.to(x.dtype), s.to(x.dtype), vh.to(x.dtype)


def truncated_svd(matrices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD of one (m x n) or a batch (B x m x n) of matrices, as (U, s, V).

    LAPACK's divide-and-conquer is fastest on tall inputs, so wide matrices are decomposed
    transposed and the factors swapped back: an m x n SVD costs the same as its transpose.
    """
    wide = matrices.shape[-2] < matrices.shape[-1]
    work = matrices.mT if wide else matrices
    u, s, vh = thin_svd(work.to(torch.promote_types(work.dtype, torch.float32)))
    u, s, v = u[..., :k], s[..., :k], vh.mT[..., :k]
    return (v, s, u) if wide else (u, s, v)


def polar_factor(x: torch.Tensor) -> torch.Tensor:
    """Closest matrix with orthonormal columns to ``x``: P Q^T from the thin SVD x = P S Q^T."""
    p, _, qh = thin_svd(x)
    return p @ qh


class TaskComponents:
    """What MASS keeps of one fine-tuned task: top components of every task matrix plus the
    (small) non-matrix part of its task vector, which is merged by the mean."""

    def __init__(self, matrices: dict[str, LowRank], others: StateDict):
        self.matrices = matrices
        self.others = others

    @classmethod
    def from_task_vector(cls, task_vector: TaskVector, rank_fraction: float,
                         device: torch.device | None = None, progress: bool = False,
                         attention: str = "in_proj") -> TaskComponents:
        """Decompose every task matrix, batching the SVDs of same-shaped matrices.

        ``attention="qkv"`` also decomposes each attention's q, k and v blocks on their own (the final
        edition's routed methods merge those, :meth:`for_attention`); the whole ``in_proj_weight`` is kept
        beside them, for the static merges and as the routing basis at attention inputs.
        """
        if attention not in ATTENTION_LAYOUTS:
            raise ValueError(f"unknown attention layout {attention!r}; one of {list(ATTENTION_LAYOUTS)}")
        device = device or default_device()
        vector = task_vector.vector
        if attention == "qkv":
            vector = {**vector, **split_attention({n: t for n, t in vector.items() if is_in_proj(n)})}
        by_shape: dict[tuple[int, ...], list[str]] = {}
        others: StateDict = {}
        for name, tensor in vector.items():
            if is_matrix(name, tensor):
                by_shape.setdefault(tuple(tensor.shape), []).append(name)
            else:
                others[name] = tensor.float().cpu()
        matrices: dict[str, LowRank] = {}
        groups = tqdm(by_shape.items(), desc="svd", disable=not progress, leave=False)
        for shape, names in groups:
            k = max(1, math.floor(min(shape) * rank_fraction))
            stack = torch.stack([vector[n].float() for n in names]).to(device)
            u, s, v = truncated_svd(stack, k)
            for i, name in enumerate(names):
                matrices[name] = LowRank(u[i].cpu(), s[i].cpu(), v[i].cpu())
        return cls(matrices, others)

    def for_attention(self, attention: str, source: str = "this SVD cache") -> TaskComponents:
        """The matrices a merge decomposes with attention laid out as ``attention``: "in_proj" keeps each
        attention's ``in_proj_weight`` whole (and leaves out the q, k, v blocks a "qkv" cache also holds);
        "qkv" takes the three blocks in its place. The other tensors are shared, not copied."""
        blocks = {n for name in self.matrices if is_in_proj(name) for n in qkv_names(name)}
        if attention == "in_proj":
            return TaskComponents({n: lr for n, lr in self.matrices.items() if n not in blocks}, self.others)
        if attention != "qkv":
            raise ValueError(f"unknown attention layout {attention!r}; one of {list(ATTENTION_LAYOUTS)}")
        missing = sorted(blocks - set(self.matrices))
        if missing:
            raise ValueError(f"{source} holds each attention's in_proj_weight whole, not its q, k and v blocks "
                             f"(no {missing[0]}): rebuild it with attention 'qkv' (the pipeline's key "
                             "merge.attention; the step svd_cache)")
        return TaskComponents({n: lr for n, lr in self.matrices.items() if not is_in_proj(n)}, self.others)

    def tensors(self, storage_dtype: str = "float32") -> dict[str, torch.Tensor]:
        """The flat dict written to the cache file: U and V and the other tensors' deltas in
        ``storage_dtype``; the singular values stay float32 (k numbers per matrix, never rounded)."""
        dtype = storage_dtype_of(storage_dtype)
        tensors = {}
        for name, lr in self.matrices.items():
            tensors[f"{name}::U"], tensors[f"{name}::V"] = lr.U.to(dtype), lr.V.to(dtype)
            tensors[f"{name}::s"] = lr.s.float()
        tensors.update({f"{name}::delta": t.to(dtype) for name, t in self.others.items()})
        return tensors

    @classmethod
    def from_tensors(cls, raw: Mapping[str, torch.Tensor]) -> TaskComponents:
        """The inverse of :meth:`tensors`, every tensor upcast to float32 (compute is float32)."""
        matrices: dict[str, dict[str, torch.Tensor]] = {}
        others: StateDict = {}
        for key, tensor in raw.items():
            name, part = key.rsplit("::", 1)
            tensor = tensor.float()
            if part == "delta":
                others[name] = tensor
            else:
                matrices.setdefault(name, {})[part] = tensor
        return cls({n: LowRank(p["U"], p["s"], p["V"]) for n, p in matrices.items()}, others)

    def rounded(self, storage_dtype: str) -> TaskComponents:
        """These components as a cache file in ``storage_dtype`` gives them back (without the file)."""
        return TaskComponents.from_tensors(self.tensors(storage_dtype))

    def save(self, path, metadata: Mapping[str, str] | None = None, storage_dtype: str = "float32") -> None:
        """Write the cache file; its metadata records ``storage_dtype`` (read by :func:`stored_dtype`)."""
        save_tensors(path, self.tensors(storage_dtype), {**(metadata or {}), "storage_dtype": storage_dtype})

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> TaskComponents:
        """A cache file, upcast to float32 whatever dtype it was stored in."""
        return cls.from_tensors(load_tensors(path, device))

    def num_parameters(self) -> int:
        low = sum(lr.U.numel() + lr.s.numel() + lr.V.numel() for lr in self.matrices.values())
        return low + sum(t.numel() for t in self.others.values())


def stored_dtype(path) -> str:
    """The ``storage_dtype`` recorded in a cache file's metadata ("float32" for files written before
    it was recorded, which were all float32)."""
    from safetensors import safe_open

    verify(path)
    with safe_open(str(path), framework="pt") as fh:
        return (fh.metadata() or {}).get("storage_dtype", "float32")


def load_components(paths: Sequence[str], attention: str = "in_proj",
                    tasks: Sequence[str] | None = None, model: str | None = None) -> list[TaskComponents]:
    """Every task's SVD cache, in the order given (benchmark order), with attention laid out as
    ``attention`` (:meth:`TaskComponents.for_attention`); with ``tasks`` (and ``model``), each file must hold
    that task (of that open_clip architecture: :func:`mass.io.check_holds`)."""
    if tasks is not None or model is not None:
        for path, task in zip(paths, tasks or [None] * len(paths), strict=True):
            check_holds(path, task=task, model=model)
    return [TaskComponents.load(p).for_attention(attention, p) for p in paths]
