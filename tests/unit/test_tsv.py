"""TSV-M, the SVD cache and the epsilon filter against hand-checkable cases."""

import math

import pytest
import torch
from support.synthetic import random_orthonormal

from mass.svd import LowRank, TaskComponents, components_per_task, polar_factor, truncated_svd
from mass.task_vectors import TaskVector, is_matrix, visual_state_dict
from mass.tsv import epsilon_filter, truncated_cosine, tsv_merge, tsv_merge_matrix


@pytest.mark.parametrize("r,T,k", [(768, 8, 96), (768, 14, 54), (768, 20, 38),
                                   (1024, 8, 128), (1024, 14, 73), (1024, 20, 51)])
def test_components_per_task_is_floor_r_over_T(r, T, k):
    assert components_per_task(r, T) == k


def test_polar_factor_has_orthonormal_columns_and_is_idempotent():
    x = torch.randn(40, 12, dtype=torch.float64)
    p = polar_factor(x)
    torch.testing.assert_close(p.T @ p, torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(polar_factor(p), p)


def test_truncated_svd_wide_equals_transpose_and_reconstructs():
    a = torch.randn(20, 50, dtype=torch.float64)
    u, s, v = truncated_svd(a, 20)
    torch.testing.assert_close((u * s) @ v.T, a)
    ut, st, vt = truncated_svd(a.T, 20)
    torch.testing.assert_close(s, st)
    torch.testing.assert_close((vt * st) @ ut.T, a)


def _low_rank(u, s, v):
    return LowRank(u, torch.tensor(s, dtype=torch.float32), v)


def test_tsvm_of_orthogonal_subspaces_equals_plain_sum():
    # three tasks whose U and V blocks are mutually orthogonal: orthogonalisation changes nothing
    u_all, v_all = random_orthonormal(30, 9, 0), random_orthonormal(24, 9, 1)
    parts = [_low_rank(u_all[:, 3 * t:3 * t + 3], [3.0 - t * 0.5, 2.0, 1.0], v_all[:, 3 * t:3 * t + 3])
             for t in range(3)]
    merged = tsv_merge_matrix(parts)
    torch.testing.assert_close(merged, sum(p.dense() for p in parts), atol=1e-5, rtol=1e-5)


def test_tsv_merge_keeps_k_components_per_task_and_rank_T_k(task_vectors):
    pre, tvs = task_vectors
    comps = [TaskComponents.from_task_vector(tv, rank_fraction=1 / 3) for tv in tvs]
    delta, accepted = tsv_merge(comps)
    name = "transformer.resblocks.0.mlp.c_fc.weight"
    k = 96 // 3
    assert torch.linalg.matrix_rank(delta[name]).item() == 3 * k
    # equals the sum of rank-k truncations after replacing U, V by polar factors
    parts = [c.matrices[name].truncate(k) for c in comps]
    u = polar_factor(torch.cat([p.U for p in parts], 1))
    v = polar_factor(torch.cat([p.V for p in parts], 1))
    expected = (u * torch.cat([p.s for p in parts])) @ v.T
    torch.testing.assert_close(delta[name], expected)
    # non-matrix tensors are the mean of the task vectors
    torch.testing.assert_close(delta["ln_post.weight"],
                               torch.stack([tv.vector["ln_post.weight"] for tv in tvs]).mean(0))
    assert accepted[name] == [0, 1, 2]


def test_single_task_merge_is_its_rank_k_truncation(task_vectors):
    _, tvs = task_vectors
    comps = [TaskComponents.from_task_vector(tv, rank_fraction=1 / 3) for tv in tvs]
    delta, _ = tsv_merge([comps[1]], num_tasks=3)
    name = "transformer.resblocks.2.attn.out_proj.weight"
    u, s, vh = torch.linalg.svd(tvs[1].vector[name])
    torch.testing.assert_close(delta[name], (u[:, :32] * s[:32]) @ vh[:32], atol=1e-5, rtol=1e-4)


def test_cosine_of_truncated_matrices_matches_dense():
    a = LowRank(*truncated_svd(torch.randn(16, 10), 4))
    b = LowRank(*truncated_svd(torch.randn(16, 10), 4))
    dense = torch.nn.functional.cosine_similarity(a.dense().flatten(), b.dense().flatten(), dim=0)
    assert truncated_cosine(a, b) == pytest.approx(float(dense), abs=1e-5)


def test_epsilon_filter_drops_scaled_copy_and_keeps_orthogonal():
    u, v = random_orthonormal(20, 6, 3), random_orthonormal(20, 6, 4)
    first = _low_rank(u[:, :3], [3.0, 2.0, 1.0], v[:, :3])
    scaled_copy = _low_rank(u[:, :3], [6.0, 4.0, 2.0], v[:, :3])
    orthogonal = _low_rank(u[:, 3:], [1.0, 1.0, 1.0], v[:, 3:])
    assert epsilon_filter([first, scaled_copy, orthogonal], epsilon=0.3) == [0, 2]
    # order matters: the first task always seeds the accepted set
    assert epsilon_filter([scaled_copy, first], epsilon=0.3) == [0]
    assert epsilon_filter([first, scaled_copy], epsilon=1.0) == [0, 1]


def test_svd_cache_roundtrip_and_matrix_classification(tmp_path, task_vectors):
    pre, tvs = task_vectors
    comp = TaskComponents.from_task_vector(tvs[0], rank_fraction=0.5)
    for name, tensor in visual_state_dict(pre).items():
        assert (name in comp.matrices) == is_matrix(name, tensor)
    assert "conv1.weight" in comp.others and "positional_embedding" in comp.matrices
    assert comp.matrices["proj"].rank == math.floor(64 * 0.5)
    comp.save(tmp_path / "c.safetensors")
    back = TaskComponents.load(tmp_path / "c.safetensors")
    torch.testing.assert_close(back.matrices["proj"].V, comp.matrices["proj"].V)
    torch.testing.assert_close(back.others["class_embedding"], comp.others["class_embedding"])
    with pytest.raises(ValueError, match="rank_fraction"):
        comp.matrices["proj"].truncate(64)


def test_visual_state_dict_accepts_common_prefixes(tiny_clip):
    full = tiny_clip.state_dict()
    bare = visual_state_dict(full)
    assert "transformer.resblocks.0.attn.in_proj_weight" in bare
    assert not any(k.startswith("token_embedding") for k in bare)
    wrapped = {f"model.visual.{k}": v for k, v in bare.items()}
    assert visual_state_dict(wrapped).keys() == bare.keys()
    tv = TaskVector.from_state_dicts(full, wrapped)
    assert all(float(v.abs().max()) == 0 for v in tv.vector.values())
