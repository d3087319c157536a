"""The per-sample low-rank second pass against dense merged weights (tiny open_clip ViT)."""

import math

import numpy as np
import pytest
import torch
from support.synthetic import perturbed_encoders, random_orthonormal

from mass.encoder import create_visual
from mass.forward import encode
from mass.mass_model import MassModel
from mass.second_pass import BatchPlan, MixedEncoder, SubsetFactors, inverse_sqrt, lowrank_update
from mass.svd import LowRank, TaskComponents, components_per_task, polar_factor, truncated_svd
from mass.task_vectors import TaskVector, split_attention
from mass.tsv import apply_delta, tsv_merge, tsv_merge_matrix

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


# Ill-conditioned subsets: tasks whose task matrices share directions (MNIST / EMNIST in the
# 20-task benchmark; the paper says they share much of their right singular subspace) and
# full rank use (T k = r). The reference is TSV-M of the same stored float32 components computed
# in float64; the bar is the error of the plain float32 algorithm (thin SVD, P Q^T) x 10.

def _spectrum_matrix(m: int, n: int, seed: int) -> torch.Tensor:
    """A full-rank m x n matrix with a decaying spectrum, like a fine-tuning task matrix."""
    u, v = random_orthonormal(m, min(m, n), seed).double(), random_orthonormal(n, min(m, n), seed + 1).double()
    return (u * torch.exp(-torch.arange(min(m, n), dtype=torch.float64) / 8)) @ v.T


def _near(a: torch.Tensor, cosine: float, seed: int) -> torch.Tensor:
    """a plus a perturbation scaled so the two flattened matrices have the given cosine."""
    noise = _spectrum_matrix(*a.shape, seed)
    noise = noise - (noise * a).sum() / (a * a).sum() * a  # orthogonal to a
    return a + math.tan(math.acos(cosine)) * a.norm() / noise.norm() * noise


def _stored(matrices: list[torch.Tensor], num_tasks: int) -> list[TaskComponents]:
    """Each task's float32 SVD factors, as the SVD cache stores them (k = floor(r / T) kept)."""
    k = components_per_task(min(matrices[0].shape), num_tasks)
    out = []
    for w in matrices:
        u, s, v = truncated_svd(w, k)
        out.append(TaskComponents({"w": LowRank(u.float(), s.float(), v.float())}, {}))
    return out


def _merge(comps: list[TaskComponents], subset, num_tasks: int, dtype: torch.dtype) -> torch.Tensor:
    k = components_per_task(min(comps[0].matrices["w"].U.shape[0], comps[0].matrices["w"].V.shape[0]), num_tasks)
    parts = [comps[t].matrices["w"].truncate(k) for t in subset]
    return tsv_merge_matrix([LowRank(p.U.to(dtype), p.s.to(dtype), p.V.to(dtype)) for p in parts])


ILL_CONDITIONED = {  # name: (task matrices, subsets merged)
    "pair, cosine 0.994": (lambda a: [a, _near(a, 0.994, 7), _spectrum_matrix(*a.shape, 9),
                                      _spectrum_matrix(*a.shape, 11)], [(0, 1)]),
    "pair, cosine 0.99996": (lambda a: [a, _near(a, 0.99996, 7), _spectrum_matrix(*a.shape, 9),
                                        _spectrum_matrix(*a.shape, 11)], [(0, 1)]),
    "near-duplicates plus others": (lambda a: [a, _near(a, 0.9999, 7), _spectrum_matrix(*a.shape, 9),
                                               _spectrum_matrix(*a.shape, 11)], [(0, 1, 2), (0, 1, 2, 3)]),
    "full rank use, T k = r": (lambda a: [a, _spectrum_matrix(*a.shape, 9)], [(0, 1)]),
    "full rank use with a near-duplicate": (lambda a: [a, _near(a, 0.999, 7)], [(0, 1)]),
}


def _relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("shape", [(96, 64), (64, 96), (300, 64)])
@pytest.mark.parametrize("case", list(ILL_CONDITIONED))
def test_subset_merge_is_as_accurate_as_plain_float32_tsvm(case, shape):
    build, subsets = ILL_CONDITIONED[case]
    M, N = shape
    matrices = build(_spectrum_matrix(M, N, 3))
    comps = _stored(matrices, len(matrices))
    factors = SubsetFactors(comps)
    for subset in subsets:
        ref = _merge(comps, subset, len(comps), torch.float64)
        bar = 10 * _relative(_merge(comps, subset, len(comps), torch.float32), ref)
        selection = torch.zeros(1, len(comps), dtype=torch.bool)
        selection[0, list(subset)] = True
        delta = factors.delta("w", subset)
        assert _relative(delta, ref) <= bar, (case, subset, "delta", _relative(delta, ref), bar)
        if factors.uses_full_rank(subset):  # MassModel runs these dense; the low-rank path refuses them
            with pytest.raises(ValueError, match="full rank"):
                BatchPlan.build(selection, factors)
            continue
        plan = BatchPlan.build(selection, factors)
        # the low-rank path on identity inputs: x Delta^T (linear layers) and x Delta (proj)
        lowrank = lowrank_update(torch.zeros(1, N, M), torch.eye(N)[None], factors, "w", plan)[0].T
        lowrank_t = lowrank_update(torch.zeros(1, M, N), torch.eye(M)[None], factors, "w", plan, transposed=True)[0]
        for path, merged in (("low-rank", lowrank), ("low-rank transposed", lowrank_t)):
            assert _relative(merged, ref) <= bar, (case, subset, path, _relative(merged, ref), bar)


def test_subsets_using_the_full_rank_run_dense(setup):
    """With T = 4 and k = floor(96 / 4) = 24, selecting all four tasks uses every matrix's full
    rank: a single such input still runs with dense weights, and equals the dense reference."""
    pre, comps, images = setup
    selection = torch.zeros(3, T, dtype=torch.bool)
    selection[0] = True
    selection[1, [0, 2]] = True
    selection[2, 1] = True
    model = MassModel(create_visual("mass-tiny-vit", pre), pre, comps, [], [], SIZE)
    assert model.encoder.factors.uses_full_rank(tuple(range(T)))
    assert not model.encoder.factors.uses_full_rank((0, 2))
    feats = model.features(images[:3], selection)
    torch.testing.assert_close(feats[:1], dense_reference(pre, comps, images[:1], tuple(range(T)), 1.0),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["in_proj", "qkv"])
def test_written_weights_of_near_duplicate_tasks_match_float64_tsvm(tiny_clip, attention):
    """write_weights on the tiny ViT, for two tasks whose task vectors have cosine ~0.9999; attention's
    in_proj merged whole or as q, k and v blocks (the written in_proj compared block by block)."""
    pre = {k: v.clone() for k, v in tiny_clip.visual.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    base = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in pre.items()}
    fts = [{k: pre[k] + base[k] + scale * torch.randn(v.shape, generator=g) for k, v in pre.items()}
           for scale in (0.0, 5e-4, 0.05)]
    comps = [TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 1 / 3, attention=attention)
             .for_attention(attention) for ft in fts]
    visual = create_visual("mass-tiny-vit", pre)
    encoder = MixedEncoder(visual, pre, SubsetFactors(comps))
    for subset in ((0, 1), (0, 1, 2)):
        encoder.write_weights(subset)
        written = visual.state_dict()
        written.update(split_attention(written))
        for name in encoder.factors.matrices:  # errors relative to ||Delta||, weights in float32 both
            delta = _merge(comps_named(comps, name), subset, len(comps), torch.float64)
            ref = encoder.pre[name].double() + delta
            plain = encoder.pre[name] + _merge(comps_named(comps, name), subset, len(comps), torch.float32)
            bar = 10 * float((plain.double() - ref).norm() / delta.norm())
            assert float((written[name].double() - ref).norm() / delta.norm()) <= bar, (subset, name)
    encoder.write_weights(None)


def comps_named(comps: list[TaskComponents], name: str) -> list[TaskComponents]:
    """One matrix of every task, under the key the helpers above read."""
    return [TaskComponents({"w": c.matrices[name]}, {}) for c in comps]
