"""TSV-C: ranks, the compressed update, its stored size, and the claim that MASS with an oracle
router (each image routed to its true task alone) is exactly TSV-C at the benchmark's k."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.synthetic import perturbed_encoders

from mass.encoder import create_visual
from mass.forward import encode
from mass.heads import head_logits
from mass.mass_model import MassModel
from mass.routing import one_hot_selection
from mass.svd import LowRank, TaskComponents
from mass.task_vectors import TaskVector, is_matrix
from mass.tsv import apply_delta
from mass.tsvc import benchmark_ranks, compressed_delta, rank_for_size, size_ranks, stored_fraction


@pytest.mark.parametrize("m,n,fraction,k", [
    (768, 768, 0.1, 38),     # 0.1 * 589824 / 1537 = 38.4
    (3072, 768, 0.1, 61),    # 0.1 * 2359296 / 3841 = 61.4
    (50, 768, 0.1, 4),       # positional embedding: 3840 / 819 = 4.7
    (96, 96, 0.1, 4),        # the demo's width: 921.6 / 193 = 4.8
    (8, 8, 0.01, 1),         # at least one component
    (8, 8, 1.0, 3),          # 64 / 17 = 3.8
])
def test_rank_for_size_is_the_largest_rank_within_the_budget(m, n, fraction, k):
    assert rank_for_size(m, n, fraction) == k
    if k > 1:
        assert k * (m + n + 1) <= fraction * m * n < (k + 1) * (m + n + 1)


def test_stored_fraction_counts_factors_and_full_non_matrix_tensors():
    comp = TaskComponents({"w": LowRank(torch.zeros(10, 3), torch.zeros(3), torch.zeros(6, 3))},
                          {"b": torch.zeros(5)})
    assert stored_fraction(comp, {"w": 2}) == pytest.approx((2 * (10 + 6 + 1) + 5) / (10 * 6 + 5))
    assert benchmark_ranks(comp, 4) == {"w": 1}  # floor(6 / 4)
    assert size_ranks(comp, 0.5) == {"w": 1}     # 30 / 17


def test_compressed_delta_is_the_best_rank_k_truncation_with_full_non_matrix_tensors(task_vectors):
    _, tvs = task_vectors
    tv = tvs[0]
    comp = TaskComponents.from_task_vector(tv, 0.5, device=torch.device("cpu"))
    ranks = benchmark_ranks(comp, 4)
    delta = compressed_delta(comp, ranks)
    assert set(delta) == set(tv.vector)
    for name, tensor in tv.vector.items():
        if is_matrix(name, tensor):
            u, s, vh = torch.linalg.svd(tensor.double(), full_matrices=False)
            k = ranks[name]
            assert k == min(tensor.shape) // 4
            best = (u[:, :k] * s[:k]) @ vh[:k]
            torch.testing.assert_close(delta[name].double(), best, atol=1e-5, rtol=1e-4)
        else:
            assert torch.equal(delta[name], tensor.float())
    with pytest.raises(ValueError, match="rank_fraction"):
        compressed_delta(comp, {name: lr.rank + 1 for name, lr in comp.matrices.items()})


@pytest.mark.parametrize("dense_min_group", [1, 1000], ids=["dense-weights", "low-rank-updates"])
def test_mass_with_an_oracle_router_is_tsvc_at_the_benchmarks_k(tiny_clip, dense_min_group):
    """Both second-pass paths, routed to the true task alone, give TSV-C's features and predictions."""
    T, per_task = 3, 5
    pre, fts = perturbed_encoders(tiny_clip, T, scale=0.05)
    comps = [TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 0.5, device=torch.device("cpu"))
             for ft in fts]
    g = torch.Generator().manual_seed(3)
    heads = [torch.nn.functional.normalize(torch.randn(4 + t, 64, generator=g), dim=-1) * 100 for t in range(T)]
    images = np.random.default_rng(0).integers(0, 256, size=(T * per_task, 32, 32, 3), dtype=np.uint8)
    task = torch.arange(T).repeat_interleave(per_task)
    mass = MassModel(create_visual("mass-tiny-vit", pre), pre, comps, heads, ["h0", "h1", "h2"], 32,
                     dense_min_group=dense_min_group)
    oracle = one_hot_selection(task, T)
    feats = mass.features(images, oracle, batch_size=8)
    pred = mass.predict(images, oracle, batch_size=8)
    assert torch.equal(pred.task, task)
    for t in range(T):
        idx = task == t
        delta = compressed_delta(comps[t], benchmark_ranks(comps[t], T))
        visual = create_visual("mass-tiny-vit", apply_delta(pre, delta))
        own, _ = encode(visual, images[idx.numpy()], 32, batch_size=8)
        torch.testing.assert_close(feats[idx], own, atol=2e-5, rtol=1e-4)
        assert torch.equal(pred.cls[idx], head_logits(own, heads[t]).argmax(1))
