"""Routers that pick, per input, which tasks' subspaces MASS activates.

The projection router (MASS Algorithm 2) needs neither data nor training: the residual of a
feature z after projecting it on a task's top right singular vectors V_i measures how foreign
z is to that task. Residuals are turned into weights by a softmax over their standardised
negatives (the official code's scale, on which eta = 0.2 is meaningful), then thresholded.
The nearest-neighbour and MLP routers of Table 3 need labelled validation features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def projection_residuals(z: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """r_i = ||z - V_i V_i^T z||_2 for every task i.

    ``z``: (N, D) features; ``bases``: (T, D, k) with orthonormal columns per task.
    Computed directly, as the official code does: the shortcut ||z||^2 - ||V_i^T z||^2 cancels
    catastrophically for an input lying almost in a subspace (27% off at a residual of 2.7e-3 with
    ||z|| = 103), and the standardised weights that eta thresholds are made from these residuals.
    """
    z, bases = z.float(), bases.float()
    coords = torch.einsum("nd,tdk->ntk", z, bases)
    return (z[:, None, :] - torch.einsum("ntk,tdk->ntd", coords, bases)).norm(dim=-1)


def routing_weights(residuals: torch.Tensor, temperature: float = 1.0,
                    standardize: bool = True) -> torch.Tensor:
    """softmax(-r / temperature) over tasks; with ``standardize`` the negative residuals are
    first centred and divided by their unbiased std (+1e-6) per sample, as the official code."""
    scores = -residuals.float()
    if standardize:
        scores = (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-6)
    return torch.softmax(scores / temperature, dim=-1)


def select_tasks(weights: torch.Tensor, eta: float, top_k: int) -> torch.Tensor:
    """Boolean (N, T) selection: tasks with weight > eta, at most ``top_k`` of them by weight;
    the argmax task when none passes."""
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    top_k = min(top_k, weights.shape[-1])
    top_w, top_i = weights.topk(top_k, dim=-1)
    chosen = torch.zeros_like(weights, dtype=torch.bool)
    chosen.scatter_(-1, top_i, top_w > eta)
    fallback = ~chosen.any(-1)
    chosen[fallback, weights[fallback].argmax(-1)] = True
    return chosen


def one_hot_selection(task_index: torch.Tensor, num_tasks: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(task_index.long(), num_tasks).bool()


class ProjectionRouter:
    """Algorithm 2's router over precomputed or live residuals."""

    def __init__(self, eta: float = 0.2, top_k: int = 3, temperature: float = 1.0,
                 standardize: bool = True):
        self.eta, self.top_k, self.temperature, self.standardize = eta, top_k, temperature, standardize

    def route_residuals(self, residuals: torch.Tensor) -> torch.Tensor:
        weights = routing_weights(residuals, self.temperature, self.standardize)
        return select_tasks(weights, self.eta, self.top_k)

    def route(self, z: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
        return self.route_residuals(projection_residuals(z, bases))


def batched_route(residuals: torch.Tensor) -> int:
    """One decision for a batch drawn from one task (Fig. 6): top-1 of the mean residuals."""
    return int(residuals.float().mean(0).argmin())


class NearestNeighbourRouter:
    """Task of the cosine-nearest stored validation feature."""

    def fit(self, features: torch.Tensor, task_labels: torch.Tensor) -> NearestNeighbourRouter:
        self.support = nn.functional.normalize(features.float(), dim=-1)
        self.labels = task_labels.long()
        return self

    def predict(self, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        out = []
        for part in torch.split(nn.functional.normalize(z.float(), dim=-1), chunk):
            out.append(self.labels[(part @ self.support.T).argmax(-1)])
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


class MLPRouter(nn.Module):
    """Two-layer task classifier (hidden 1024, ReLU, dropout 0.5) trained on validation features."""

    def __init__(self, in_dim: int, num_tasks: int, hidden: int = 1024, dropout: float = 0.5,
                 seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_tasks))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def fit(self, features: torch.Tensor, task_labels: torch.Tensor, epochs: int = 20,
            batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> MLPRouter:
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(self.parameters(), lr=lr)
        x, y = features.float(), task_labels.long()
        self.train()
        with torch.random.fork_rng():  # dropout masks: seeded, without touching global state
            torch.manual_seed(seed)
            for _ in range(epochs):
                order = torch.randperm(len(x), generator=generator)
                for idx in torch.split(order, batch_size):
                    optimiser.zero_grad()
                    nn.functional.cross_entropy(self(x[idx]), y[idx]).backward()
                    optimiser.step()
        self.eval()
        return self

    @torch.no_grad()
    def predict(self, z: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self(z.float()).argmax(-1)


def routing_accuracy_per_task(routed: torch.Tensor, true_task: torch.Tensor,
                              task_names: Sequence[str]) -> dict[str, float]:
    """Share of each task's samples routed to that task (``routed``: one task index per sample);
    tasks without samples are left out. The projection router routes to the argmin residual."""
    return {name: float((routed[true_task == t] == t).float().mean())
            for t, name in enumerate(task_names) if bool((true_task == t).any())}


def top_m(weights: torch.Tensor, m: int) -> torch.Tensor:
    """The m highest-weighted tasks of every sample."""
    return torch.zeros_like(weights, dtype=torch.bool).scatter_(-1, weights.topk(m, -1).indices, True)


def selection_size(weights: torch.Tensor, eta: float, top_k: int) -> torch.Tensor:
    """How many tasks ``select_tasks`` keeps per sample (its choices are always the top ones)."""
    return select_tasks(weights, eta, top_k).sum(-1)
