"""SMILE and WEMoE for benchmarks/run.py: built from the same synthetic task components as MASS, so all three
run on the same images in the same interleaved rounds; WEMoE's adaptation timed per step.

Their weights' values change none of their costs: WEMoE's Task Arithmetic base is theta_pre here, and its
MLP task vectors are the synthetic components multiplied out (U diag(s) V^T, the others' dense deltas).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mass.cost import held_parameters, mass_parameters, sync
from mass.data.store import to_model_input
from mass.encoder import create_visual, image_size
from mass.heads import head_logits
from mass.smile import SmileModel
from mass.svd import TaskComponents
from mass.wemoe import WEMoEModel, adapt, predict

# The final code's image settings (config.yaml moerging): SMILE gate_k 16, k 32, top_k 1; WEMoE init_lambda 0.3,
# 16 images per task and adaptation step, lr 1e-4; 1000 steps published.
SMILE = {"gate_k": 16, "k": 32, "top_k": 1}
WEMOE = {"init_lambda": 0.3, "batch_size": 16, "lr": 1e-4, "published_steps": 1000}


def make_smile(args: argparse.Namespace, device: torch.device, pretrained: dict[str, torch.Tensor],
               comps: Sequence[TaskComponents]) -> SmileModel:
    options = {key: min(value, _least_components(comps)) if key != "top_k" else value for key, value in SMILE.items()}
    return SmileModel(create_visual(args.model, pretrained, device), pretrained, comps, **options, device=device)


def _least_components(comps: Sequence[TaskComponents]) -> int:
    """SMILE's gate_k and k are capped by the components kept (the tiny model of --quick keeps fewer)."""
    return min(lr.s.shape[0] for lr in comps[0].matrices.values())


def mlp_task_vectors(comps: Sequence[TaskComponents]) -> Callable[[str], torch.Tensor]:
    """``key`` -> (T, ...) every task's MLP tensor, as :class:`mass.wemoe.WEMoEModel` reads them."""
    def stack(key: str) -> torch.Tensor:
        parts = []
        for c in comps:
            if key in c.matrices:
                lr = c.matrices[key]
                parts.append((lr.U * lr.s) @ lr.V.T)
            else:
                parts.append(c.others[key])
        return torch.stack(parts)
    return stack


def make_wemoe(args: argparse.Namespace, device: torch.device, pretrained: dict[str, torch.Tensor],
               comps: Sequence[TaskComponents]) -> WEMoEModel:
    return WEMoEModel(create_visual(args.model, pretrained, device), pretrained, mlp_task_vectors(comps), len(comps),
                      WEMOE["init_lambda"], args.seed)


def infer(args, device, model: SmileModel | WEMoEModel, images: np.ndarray) -> object:
    """One inference pass over ``images``, ``args.batch_size`` at a time (WEMoE: one merged MLP per batch)."""
    size = image_size(args.model)
    if isinstance(model, SmileModel):
        return model.predict(images, size, args.batch_size)
    return predict(model, images, size, args.batch_size, device)


def steps(args, device, smile: SmileModel, wemoe: WEMoEModel, images: np.ndarray) -> dict[str, Callable[[], object]]:
    return {"smile": lambda: infer(args, device, smile, images), "wemoe": lambda: infer(args, device, wemoe, images)}


def wemoe_adaptation(args, device, model: WEMoEModel, images: np.ndarray) -> dict:
    """Seconds per adaptation step (every task's batch of 16, forward and backward, one AdamW step), best of
    ``args.wemoe_steps`` steps after one warm-up step; the published 1000 steps extrapolated from it."""
    T, size = model.moe[0].router.fc2.out_features, image_size(args.model)
    g = torch.Generator().manual_seed(args.seed)
    heads = [torch.randn(10, model.visual.output_dim, generator=g).to(device) for _ in range(T)]
    batch = to_model_input(torch.from_numpy(images[: WEMOE["batch_size"]]), size, device)
    sources = [itertools.repeat(batch) for _ in range(T)]
    adapt(model, sources, heads, 1, WEMOE["lr"], head_logits)  # warm-up
    best = float("inf")
    for _ in range(args.wemoe_steps):
        start = time.perf_counter()
        adapt(model, sources, heads, 1, WEMOE["lr"], head_logits)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {"images_per_task_and_step": len(batch), "steps_timed": args.wemoe_steps, "s_per_step": best,
            "published_steps": WEMOE["published_steps"],
            "published_steps_s_extrapolated": best * WEMOE["published_steps"]}


def storage(pretrained: dict[str, torch.Tensor], comps: Sequence[TaskComponents], smile: SmileModel,
            wemoe: WEMoEModel) -> dict:
    """Parameters each method keeps over the pretrained encoder's (MASS: :func:`mass.cost.mass_parameters`)."""
    pre = held_parameters(pretrained)
    return {"mass_storage_over_pretrained": mass_parameters(pretrained, comps) / pre,
            "smile_over_pretrained": held_parameters(smile.visual) / pre,
            "wemoe_over_pretrained": held_parameters(wemoe) / pre}
