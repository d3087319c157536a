"""WEMoE (Tang et al., 2024) as the final edition's code builds, adapts and scores it.

- Base: Task Arithmetic, theta_pre + alpha_T sum_t tau_t (alpha_T by the number of tasks, the final code's
  table, :func:`ta_alpha`).
- Every block's MLP (``c_fc``, GELU, ``c_proj``) becomes a weight-ensembling MoE over the tasks' MLP task
  vectors: its weights are theta_pre's MLP plus sum_t lambda_t tau_t (the MLP's part of the base is the
  zero-shot one), with lambda from a two-layer router on the block's MLP input: fc1 (D -> D, weights
  N(0, 0.01^2), bias 0), ReLU, fc2 (D -> T, weights N(0, 0.01^2), bias ``init_lambda`` = 0.3), raw outputs
  (no softmax) averaged over tokens and then over the batch (``batch_reduce``): one merged MLP per batch.
- Test-time adaptation: only the routers train, to lower the entropy of each task's own head on batches of
  that task's unlabelled images (the final code: its test images, unshuffled, 16 per task and step, the
  gradients of all tasks accumulated, AdamW at lr 1e-4, 1000 steps).
- Head: per block the task with the largest gate output of each image (before the batch average), and
  the image's head the most frequent over blocks (``torch.mode``).

we_moe.py @ 702177e and modules/we_moe.py @ 9c963a1 of crisostomi/mass (conf/nn/module/wemoe.yaml @ 64464b4);
FusionBench's ``fusion_bench/method/we_moe`` has the same gate and initialisation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mass.data.store import make_loader, to_model_input
from mass.forward import count_forwarded, encode
from mass.second_pass import check_supported
from mass.task_vectors import StateDict, TaskVectorFiles

MLP_KEYS = ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")
# Task Arithmetic's alpha by number of tasks in the final code (conf/merger/ta.yaml @ 2cfd42d, with 1 and 3
# from conf/nn/module/base_merger/ta.yaml @ 64464b4); other T: 0.7733 T^-0.5517 (arithmetic_merger.py @ 0a4803b).
TA_ALPHAS = {1: 1.0, 2: 0.5, 3: 0.4, 8: 0.3, 14: 0.2, 20: 0.1}


def ta_alpha(num_tasks: int) -> float:
    """The final code's Task Arithmetic coefficient for ``num_tasks`` tasks."""
    return TA_ALPHAS.get(num_tasks, 0.7733 * num_tasks ** -0.5517)


class Router(nn.Module):
    """The final code's ``Depth_2_Gate``: Linear(D, D), ReLU, Linear(D, T); outputs used raw."""

    def __init__(self, width: int, num_tasks: int, init_lambda: float, generator: torch.Generator):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, num_tasks)
        with torch.no_grad():
            for layer in (self.fc1, self.fc2):
                layer.weight.copy_(0.01 * torch.randn(layer.weight.shape, generator=generator))
            self.fc1.bias.zero_()
            self.fc2.bias.fill_(init_lambda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class WeightEnsemblingMLP(nn.Module):
    """A block's MLP whose weights are theta_pre's plus sum_t lambda_t tau_t, lambda from its router on the
    MLP input (batch first), averaged over tokens and over the batch. :attr:`chosen` keeps each image's
    largest-gate task of the last forward, for the head vote."""

    def __init__(self, mlp: nn.Module, pretrained: Mapping[str, torch.Tensor], task_vectors: Mapping[str, torch.Tensor],
                 router: Router):
        super().__init__()
        self.gelu, self.router = mlp.gelu, router
        for key in MLP_KEYS:  # frozen: buffers
            self.register_buffer(f"pre_{key.replace('.', '_')}", pretrained[key].float())
            self.register_buffer(f"tau_{key.replace('.', '_')}", task_vectors[key].float())
        self.chosen: torch.Tensor | None = None

    def merged(self, key: str, lam: torch.Tensor) -> torch.Tensor:
        name = key.replace(".", "_")
        tau = getattr(self, f"tau_{name}")
        return getattr(self, f"pre_{name}") + torch.tensordot(lam, tau, dims=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.router(x).mean(dim=1)  # (N, T)
        self.chosen = gates.detach().argmax(dim=1)
        lam = gates.mean(dim=0)
        h = self.gelu(F.linear(x, self.merged("c_fc.weight", lam), self.merged("c_fc.bias", lam)))
        return F.linear(h, self.merged("c_proj.weight", lam), self.merged("c_proj.bias", lam))


class WEMoEModel(nn.Module):
    """The image tower at the Task Arithmetic base with every block's MLP a :class:`WeightEnsemblingMLP`."""

    def __init__(self, visual: nn.Module, pretrained: StateDict, mlp_task_vectors: Callable[[str], torch.Tensor],
                 num_tasks: int, init_lambda: float = 0.3, seed: int = 0):
        """``visual`` holds the base weights already; ``mlp_task_vectors(key)`` gives one MLP tensor of every
        task, (T, ...) (e.g. :meth:`mass.task_vectors.TaskVectorFiles.stack`)."""
        super().__init__()
        check_supported(visual)
        self.visual = visual.requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        self.moe: list[WeightEnsemblingMLP] = []
        for i, block in enumerate(visual.transformer.resblocks):
            prefix = f"transformer.resblocks.{i}.mlp"
            device = block.mlp.c_fc.weight.device
            router = Router(block.mlp.c_fc.in_features, num_tasks, init_lambda, generator).to(device)
            mlp = WeightEnsemblingMLP(block.mlp, {k: pretrained[f"{prefix}.{k}"] for k in MLP_KEYS},
                                      {k: mlp_task_vectors(f"{prefix}.{k}") for k in MLP_KEYS}, router).to(device)
            block.mlp = mlp
            self.moe.append(mlp)

    def routers(self) -> list[nn.Parameter]:
        return [p for m in self.moe for p in m.router.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def head_vote(self) -> torch.Tensor:
        """Each image's head from the last forward: the most frequent largest-gate task over blocks."""
        return torch.stack([m.chosen for m in self.moe]).mode(dim=0).values

    def pop(self) -> dict[str, torch.Tensor]:
        """The last batch's voted heads, for :func:`mass.forward.encode`."""
        return {"head": self.head_vote().cpu()}


def from_task_vectors(model: str, pretrained: StateDict, task_vectors: TaskVectorFiles, init_lambda: float,
                      seed: int, device: str | torch.device = "cpu") -> WEMoEModel:
    """WEMoE as the pipeline evaluates it: the image tower ``model`` at the Task Arithmetic base
    (:func:`ta_alpha` of the number of tasks) with every MLP a weight-ensembling MoE over ``task_vectors``."""
    from mass.baselines import task_arithmetic
    from mass.encoder import create_visual
    from mass.tsv import apply_delta

    T = len(task_vectors)
    base = apply_delta(pretrained, task_arithmetic(task_vectors, ta_alpha(T)))
    return WEMoEModel(create_visual(model, base, device), pretrained, task_vectors.stack, T, init_lambda, seed)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum p log(p + 1e-8), p the softmax of ``logits`` (the final code's loss)."""
    p = logits.softmax(dim=-1)
    return -(p * torch.log(p + 1e-8)).sum(dim=-1).mean()


def adapt(model: WEMoEModel, batches: Sequence[Iterator[torch.Tensor]], heads: Sequence[torch.Tensor], steps: int,
          lr: float, logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[float]:
    """Test-time adaptation of the routers: each step, for every task, one batch of that task's unlabelled
    images (``batches[t]``, cycled), the entropy of its own head's logits, gradients accumulated over the
    tasks; then one AdamW step (torch's default weight decay). Returns the summed loss of every step."""
    optimizer = torch.optim.AdamW(model.routers(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        total = 0.0
        for t, source in enumerate(batches):
            images = next(source)
            count_forwarded(len(images))
            loss = entropy(logits(model(images), heads[t]))
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total)
    model.eval()
    return losses


def task_batches(images: np.ndarray, image_size: int, batch_size: int,
                 device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
    """One task's images as model inputs in their stored order, ``batch_size`` at a time, restarted at the
    end (the final code's unshuffled infinite test loader)."""
    for _ in itertools.count():
        for batch in make_loader(images, batch_size=batch_size, workers=0, device=device):
            yield to_model_input(batch, image_size, device)


def predict(model: WEMoEModel, images: np.ndarray, image_size: int, batch_size: int,
            device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Features and voted heads of ``images`` in their order, ``batch_size`` at a time: each batch gets one
    merged MLP per block from its mean gate. The final code evaluates each task's test split on its own, so
    its batches hold one task's images; pass one task's images to reproduce that."""
    features, recorded = encode(model, images, image_size, batch_size, device, probe=model)
    return features, recorded["head"]
