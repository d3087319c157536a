"""The MASS model: MASS's second pass, each input through theta_pre + alpha * TSV-M(its selected tasks).

Its first pass (:mod:`mass.forward`) runs once through the fixed TSV-M model and yields the
routing residuals; a router turns them into a task subset per input. The second pass runs every
input once through its own merge: frequent subsets with dense merged weights written into the
encoder, rare ones together with per-sample low-rank updates (:mod:`mass.second_pass`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mass.data.store import RowSubset, make_loader, to_model_input
from mass.encoder import create_visual, image_size
from mass.evaluation import correct_published, correct_strict
from mass.forward import count_forwarded, encode
from mass.heads import head_logits, load_heads
from mass.io import load_tensors
from mass.second_pass import BatchPlan, MixedEncoder, SubsetFactors
from mass.svd import TaskComponents, load_components
from mass.task_vectors import StateDict, visual_state_dict
from mass.training import default_device


def predict_over_heads(features: torch.Tensor, heads: Sequence[torch.Tensor],
                       candidates: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Highest raw logit over all (head, class) pairs of the candidate heads -> (head, class)."""
    logits = [head_logits(features, heads[i]) for i in candidates]
    sizes = [lg.shape[1] for lg in logits]
    flat = torch.cat(logits, dim=1).argmax(1)
    offsets = torch.tensor(np.cumsum([0] + sizes[:-1]))
    which = torch.bucketize(flat, offsets, right=True) - 1
    cls = flat - offsets[which]
    return torch.tensor(candidates)[which], cls


@dataclass
class Predictions:
    """Per-sample outputs of a second pass: chosen head (task index) and class, and the second-pass
    features they were read from (for the published scoring, :meth:`MassModel.is_correct_published`)."""

    task: torch.Tensor
    cls: torch.Tensor
    features: torch.Tensor | None = None


class MassModel:
    """theta_pre + alpha * TSV-M(selected tasks), with its own task subset per input.

    The second pass is hybrid. A subset selected by at least ``dense_min_group`` inputs, or one
    that uses a matrix's full rank (all T tasks selected where T k = r: the low-rank update is
    not accurate enough there, see :meth:`SubsetFactors.delta`), gets its dense merged weights
    (one matmul chain per matrix from the cached factorised merge) written into ``visual`` in
    place, and those inputs run the plain open_clip forward. The inputs of rarer subsets run
    together, sorted by subset, through :class:`MixedEncoder`, which adds
    each sample's low-rank update to theta_pre on the fly. Per matrix, building dense weights
    costs as many FLOPs as the low-rank updates of m n / (L (m + n)) samples (~12 for ViT-B/32
    at 224 px), whatever the subset. Measured on a 2-core CPU (ViT-B/32, 8 tasks): writing the
    weights takes 0.5-1.0 s, 2.5-5 image forwards, while the low-rank path costs 1.0-1.5
    forwards per image, so the break-even group is ~8-16 inputs; hence the default 12.
    """

    def __init__(self, visual: nn.Module, pretrained: StateDict, components: Sequence[TaskComponents],
                 heads: Sequence[torch.Tensor], head_names: Sequence[str], image_size: int,
                 device: str | torch.device = "cpu", alpha: float = 1.0, cache_size: int = 256,
                 dense_min_group: int = 12):
        self.visual, self.pretrained, self.components = visual, pretrained, list(components)
        self.heads, self.head_names = list(heads), list(head_names)
        self.image_size, self.device, self.alpha = image_size, device, alpha
        self.cache_size, self.dense_min_group = cache_size, dense_min_group

    @classmethod
    def from_files(cls, model: str, pretrained: str, components: Sequence[str], heads: Sequence[str],
                   alpha: float = 1.0, device: str | torch.device | None = None,
                   attention: str = "in_proj", tasks: Sequence[str] | None = None) -> MassModel:
        """The model from the pipeline's files: open_clip architecture ``model``, theta_pre (CLIP or
        image-tower safetensors), each task's SVD cache and head, in benchmark order; ``attention``: q, k
        and v merged as one matrix or three (:meth:`mass.svd.TaskComponents.for_attention`)."""
        device = device or default_device()
        pre = visual_state_dict(load_tensors(pretrained))
        head_weights, head_names = load_heads(heads, tasks, model)
        return cls(create_visual(model, pre, device), pre, load_components(components, attention, tasks, model),
                   head_weights, head_names, image_size(model), device, alpha)

    @property
    def num_tasks(self) -> int:
        return len(self.components)

    @cached_property
    def encoder(self) -> MixedEncoder:
        """Built on first use: the task factors and their Gram matrices (cores: ``cache_size`` subsets)."""
        factors = SubsetFactors(self.components, self.alpha, self.device, self.cache_size)
        return MixedEncoder(self.visual, self.pretrained, factors)

    def candidate_heads(self, subset: tuple[int, ...]) -> list[int]:
        """Selected tasks, one per distinct head (STL10/CIFAR10 share a head)."""
        seen, out = set(), []
        for t in subset:
            if self.head_names[t] not in seen:
                seen.add(self.head_names[t])
                out.append(t)
        return out

    def predict_features(self, features: torch.Tensor, selection: torch.Tensor) -> Predictions:
        """Highest logit over the heads of each sample's own selected tasks."""
        task = torch.empty(len(features), dtype=torch.long)
        cls = torch.empty(len(features), dtype=torch.long)
        subsets, inverse = torch.unique(selection.bool(), dim=0, return_inverse=True)
        for g, row in enumerate(subsets):
            idx = torch.nonzero(inverse == g).flatten()
            subset = tuple(int(i) for i in torch.nonzero(row).flatten())
            task[idx], cls[idx] = predict_over_heads(features[idx], self.heads, self.candidate_heads(subset))
        return Predictions(task, cls, features)

    @torch.no_grad()
    def features(self, images: np.ndarray, selection: torch.Tensor, batch_size: int = 256,
                 workers: int | None = None, desc: str | None = None) -> torch.Tensor:
        """Second-pass image features (N x d, float32 on CPU) under each sample's selection."""
        if selection.shape != (len(images), self.num_tasks):
            raise ValueError(f"selection must be {len(images)} x {self.num_tasks}")
        self.visual.eval()
        subsets, subset_of = torch.unique(selection.bool(), dim=0, return_inverse=True)
        dense = torch.bincount(subset_of, minlength=len(subsets)) >= self.dense_min_group
        dense |= torch.tensor([self.encoder.factors.uses_full_rank(tuple(torch.nonzero(row).flatten().tolist()))
                               for row in subsets], dtype=torch.bool)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input indices, features)
        try:
            for g in torch.nonzero(dense).flatten().tolist():
                idx = torch.nonzero(subset_of == g).flatten()
                self.encoder.write_weights(tuple(torch.nonzero(subsets[g]).flatten().tolist()))
                parts.append((idx, encode(self.visual, RowSubset(images, idx.numpy()), self.image_size, batch_size,
                                          self.device, workers, desc)[0]))
        finally:
            self.encoder.write_weights(None)
        rest = torch.nonzero(~dense[subset_of]).flatten()
        rest = rest[torch.argsort(subset_of[rest], stable=True)]  # batches with fewer, larger groups
        loader = make_loader(RowSubset(images, rest.numpy()), batch_size=batch_size, workers=workers,
                             device=self.device)
        for idx, batch in zip(rest.split(batch_size) if len(rest) else (),
                              tqdm(loader, desc=desc, disable=desc is None, leave=False), strict=True):
            plan = BatchPlan.build(selection[idx], self.encoder.factors)
            count_forwarded(len(idx))
            parts.append((idx, self.encoder(to_model_input(batch, self.image_size, self.device), plan).float().cpu()))
        if not parts:
            return torch.empty(0)
        feats = torch.empty(len(images), parts[0][1].shape[1])
        for idx, part in parts:
            feats[idx] = part
        return feats

    def predict(self, images: np.ndarray, selection: torch.Tensor, batch_size: int = 256,
                workers: int | None = None, desc: str | None = None) -> Predictions:
        """Second pass over all inputs (selection: N x T boolean) and the per-sample head argmax."""
        return self.predict_features(self.features(images, selection, batch_size, workers, desc), selection)

    def is_correct(self, pred: Predictions, true_task: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Strict: correct when the chosen head is the true task's head and the class matches."""
        return correct_strict(pred.task, pred.cls, true_task, labels, self.head_names)

    def is_correct_published(self, pred: Predictions, true_task: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """As both editions' code scores a routed prediction (:func:`mass.evaluation.correct_published`)."""
        if pred.features is None:
            raise ValueError("the published scoring needs the second-pass features (Predictions.features)")
        return correct_published(pred.features, self.heads, pred.task, true_task, labels)
