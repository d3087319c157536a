"""The per-sample low-rank second pass against dense merged weights (tiny open_clip ViT)."""

import numpy as np
import pytest
import torch
from conftest import perturbed_encoders

from mass.encoder import create_visual
from mass.inference import MassModel, encode
from mass.second_pass import SubsetFactors, inverse_sqrt
from mass.svd import TaskComponents, polar_factor
from mass.task_vectors import TaskVector
from mass.tsv import apply_delta, tsv_merge

SIZE, T = 32, 4


@pytest.fixture(scope="module")
def setup(tiny_clip):
    pre, fts = perturbed_encoders(tiny_clip, T, scale=0.05)
    comps = [TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 1 / T) for ft in fts]
    images = np.random.default_rng(0).integers(0, 256, size=(9, SIZE, SIZE, 3), dtype=np.uint8)
    return pre, comps, images


def dense_reference(pre, comps, images, subset, alpha):
    delta, _ = tsv_merge([comps[i] for i in subset], num_tasks=T)
    feats, _ = encode(create_visual("mass-tiny-vit", apply_delta(pre, delta, alpha)), images, SIZE)
    return feats


def test_inverse_sqrt_gives_the_polar_factor():
    x = torch.randn(50, 12, dtype=torch.float64)
    torch.testing.assert_close(x @ inverse_sqrt(x.T @ x), polar_factor(x))


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_mixed_selection_equals_dense_merged_weights(setup, alpha):
    pre, comps, images = setup
    subsets = [(0,), (1, 2), (0, 1, 3), (3,), (2,), (0, 1, 3), (1, 2, 3), (0, 2), (1,)]
    selection = torch.zeros(len(images), T, dtype=torch.bool)
    for n, s in enumerate(subsets):
        selection[n, list(s)] = True
    model = MassModel(create_visual("mass-tiny-vit", pre), pre, comps, [], [], SIZE, alpha=alpha, cache_size=2)
    feats = model.features(images, selection, batch_size=5)
    for n, s in enumerate(subsets):
        expected = dense_reference(pre, comps, images[n:n + 1], s, alpha)
        torch.testing.assert_close(feats[n:n + 1], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dense_min_group", [3, 1])
def test_hybrid_dense_and_lowrank_groups_equal_dense_merged_weights(setup, dense_min_group):
    pre, comps, images = setup
    # (0, 1, 3) and (2,) reach dense_min_group = 3 and run with merged weights written into the
    # encoder; the other subsets share the low-rank batches. With 1, every subset runs dense.
    subsets = [(0, 1, 3), (2,), (1, 2), (0, 1, 3), (2,), (3,), (0, 1, 3), (2,), (0, 2)]
    selection = torch.zeros(len(images), T, dtype=torch.bool)
    for n, s in enumerate(subsets):
        selection[n, list(s)] = True
    visual = create_visual("mass-tiny-vit", pre)
    model = MassModel(visual, pre, comps, [], [], SIZE, alpha=0.7, dense_min_group=dense_min_group)
    feats = model.features(images, selection, batch_size=2)
    for s in set(subsets):
        idx = [n for n, t in enumerate(subsets) if t == s]
        torch.testing.assert_close(feats[idx], dense_reference(pre, comps, images[idx], s, 0.7),
                                   atol=1e-4, rtol=1e-4)
    for name, param in visual.state_dict().items():  # theta_pre is restored afterwards
        torch.testing.assert_close(param, pre[name])


def test_subset_cores_are_cached_and_evicted(setup):
    _, comps, _ = setup
    factors = SubsetFactors(comps, cache_size=2)
    first = factors.cores((0, 1))
    assert factors.cores((0, 1)) is first
    factors.cores((2,))
    factors.cores((1, 3))
    assert list(factors.cache) == [(2,), (1, 3)]
