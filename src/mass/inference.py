"""Forward passes: oracle-head evaluation, the MASS first pass and the grouped second pass.

MASS costs two forward passes. The first, through the fixed TSV-M model, yields in one go the
final features (TSV-M baseline logits for any head, features for the NN/MLP routers) and the
routing residuals at every probed layer. The second groups the inputs by routing decision and
runs each group once through theta_pre + TSV-M(selected tasks), reusing one encoder whose
weights are overwritten in place and caching the merged weights of each task subset.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mass.data.store import make_loader, to_model_input
from mass.encoder import FirstPassProbe, load_visual
from mass.heads import head_logits
from mass.svd import TaskComponents
from mass.task_vectors import LayerId, StateDict
from mass.tsv import apply_delta, tsv_merge


@torch.no_grad()
def encode(visual: nn.Module, images: np.ndarray, image_size: int, batch_size: int = 256,
           device: str | torch.device = "cpu", workers: int = 0, desc: str | None = None,
           probe: FirstPassProbe | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image features of ``visual`` (N x d, float32 on CPU) and, with a probe, its residuals."""
    visual.eval()
    feats, recorded = [], []
    loader = make_loader(images, batch_size=batch_size, workers=workers)
    for batch in tqdm(loader, desc=desc, disable=desc is None, leave=False):
        feats.append(visual(to_model_input(batch, image_size, device)).float().cpu())
        if probe is not None:
            recorded.append(probe.pop())
    residuals = {k: torch.cat([r[k] for r in recorded]) for k in recorded[0]} if recorded else {}
    return (torch.cat(feats) if feats else torch.empty(0)), residuals


def layer_bases(components: Sequence[TaskComponents], layers: Sequence[LayerId],
                num_tasks: int) -> dict[LayerId, torch.Tensor]:
    """(T, D, k) orthonormal bases per layer: V of the module's first matrix for inputs, U of
    its last matrix for outputs, truncated to the benchmark's k = floor(r / T)."""
    bases = {}
    for layer in layers:
        parts = []
        for comp in components:
            lr = comp.matrices[layer.basis_key]
            k = min(lr.U.shape[0], lr.V.shape[0]) // num_tasks
            parts.append((lr.V if layer.io == "in" else lr.U)[:, :k].float())
        bases[layer] = torch.stack(parts)
    return bases


def first_pass(visual: nn.Module, images: np.ndarray, image_size: int,
               bases: Mapping[LayerId, torch.Tensor], tokens: Sequence[str] = ("cls",),
               batch_size: int = 256, device: str | torch.device = "cpu", workers: int = 0,
               desc: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Features and residuals (key "<block>.<module>.<io>.<token>" -> N x T) in one pass."""
    device_bases = {layer: b.to(device) for layer, b in bases.items()}
    with FirstPassProbe(visual, device_bases, tokens) as probe:
        return encode(visual, images, image_size, batch_size, device, workers, desc, probe)


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
    """Per-sample outputs of a second pass: chosen head (task index) and class."""

    task: torch.Tensor
    cls: torch.Tensor


class MassModel:
    """theta_pre + TSV-M(selected tasks) with one reusable encoder and a merged-weight cache."""

    def __init__(self, visual: nn.Module, pretrained: StateDict, components: Sequence[TaskComponents],
                 heads: Sequence[torch.Tensor], head_names: Sequence[str], image_size: int,
                 device: str | torch.device = "cpu", alpha: float = 1.0, cache_size: int = 4):
        self.visual, self.pretrained, self.components = visual, pretrained, list(components)
        self.heads, self.head_names = list(heads), list(head_names)
        self.image_size, self.device, self.alpha = image_size, device, alpha
        self.cache: OrderedDict[tuple[int, ...], StateDict] = OrderedDict()
        self.cache_size = cache_size

    @property
    def num_tasks(self) -> int:
        return len(self.components)

    def merged_weights(self, subset: tuple[int, ...]) -> StateDict:
        """Encoder weights for a task subset, merged with the benchmark's k (LRU-cached)."""
        if subset in self.cache:
            self.cache.move_to_end(subset)
            return self.cache[subset]
        delta, _ = tsv_merge([self.components[i] for i in subset], num_tasks=self.num_tasks,
                             device=self.device)
        weights = apply_delta(self.pretrained, delta, self.alpha)
        self.cache[subset] = weights
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return weights

    def candidate_heads(self, subset: tuple[int, ...]) -> list[int]:
        """Selected tasks, one per distinct head (STL10/CIFAR10 share a head)."""
        seen, out = set(), []
        for t in subset:
            if self.head_names[t] not in seen:
                seen.add(self.head_names[t])
                out.append(t)
        return out

    @torch.no_grad()
    def predict(self, images: np.ndarray, selection: torch.Tensor, batch_size: int = 256,
                workers: int = 0, desc: str | None = None) -> Predictions:
        """Second pass over all inputs, grouped by their selection (N x T boolean)."""
        if selection.shape != (len(images), self.num_tasks):
            raise ValueError(f"selection must be {len(images)} x {self.num_tasks}")
        subsets, inverse = torch.unique(selection.bool(), dim=0, return_inverse=True)
        task = torch.empty(len(images), dtype=torch.long)
        cls = torch.empty(len(images), dtype=torch.long)
        groups = tqdm(range(len(subsets)), desc=desc, disable=desc is None, leave=False)
        for g in groups:
            subset = tuple(int(i) for i in torch.nonzero(subsets[g]).flatten())
            idx = torch.nonzero(inverse == g).flatten().numpy()
            load_visual(self.visual, self.merged_weights(subset))
            feats, _ = encode(self.visual, images[idx], self.image_size, batch_size,
                              self.device, workers)
            t, c = predict_over_heads(feats, self.heads, self.candidate_heads(subset))
            task[idx], cls[idx] = t, c
        return Predictions(task, cls)

    def is_correct(self, pred: Predictions, true_task: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Correct when the chosen head is the true task's head and the class matches."""
        names = np.asarray(self.head_names)
        same_head = torch.from_numpy(names[pred.task.numpy()] == names[true_task.numpy()])
        return same_head & (pred.cls == labels)
