"""Attention's input projection as one 3D x D matrix (first edition) or as q, k and v blocks (the final
edition's routed methods): the SVD cache, TSV-M, the epsilon filter and the second pass in both layouts,
against a float64 re-derivation from the task vectors and hand cases."""

import numpy as np
import pytest
import torch
from support.synthetic import perturbed_encoders

from mass.encoder import create_visual
from mass.forward import encode
from mass.mass_model import MassModel
from mass.svd import TaskComponents, load_components
from mass.task_vectors import TaskVector, join_attention, qkv_names, split_attention
from mass.tsv import apply_delta, tsv_merge

IN_PROJ = "transformer.resblocks.1.attn.in_proj_weight"
SIZE, T = 32, 4


def test_split_and_join_name_and_order_the_blocks_as_the_final_code():
    w = torch.arange(12.0).reshape(6, 2)  # rows 0-1: q, 2-3: k, 4-5: v
    split = split_attention({"ln.weight": torch.ones(2), "b.attn.in_proj_weight": w})
    assert list(split) == ["ln.weight", "b.attn.in_proj_q.weight", "b.attn.in_proj_k.weight", "b.attn.in_proj_v.weight"]
    assert split["b.attn.in_proj_k.weight"].tolist() == [[4.0, 5.0], [6.0, 7.0]]
    joined = join_attention(split)
    assert list(joined) == ["ln.weight", "b.attn.in_proj_weight"]
    assert torch.equal(joined["b.attn.in_proj_weight"], w)


def tsvm_float64(matrices: list[torch.Tensor], num_tasks: int) -> torch.Tensor:
    """TSV-M from the description, in float64: each task's top k = floor(r / T) singular triplets,
    concatenated; U and V replaced by their nearest orthonormal matrices (polar factors)."""
    k = min(matrices[0].shape) // num_tasks
    us, ss, vs = [], [], []
    for w in matrices:
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        us.append(u[:, :k]), ss.append(s[:k]), vs.append(vh[:k].T)
    polar = [p @ qh for p, _, qh in (torch.linalg.svd(torch.cat(x, 1), full_matrices=False) for x in (us, vs))]
    return (polar[0] * torch.cat(ss)) @ polar[1].T


def reference(task_vectors: list[TaskVector], name: str, attention: str) -> torch.Tensor:
    """The merged in_proj: whole, or block by block and concatenated."""
    mats = [tv.vector[name] for tv in task_vectors]
    if attention == "in_proj":
        return tsvm_float64(mats, len(mats))
    return torch.cat([tsvm_float64([m.chunk(3)[j] for m in mats], len(mats)) for j in range(3)])


@pytest.fixture(scope="module")
def tasks(tiny_clip):
    pre, fts = perturbed_encoders(tiny_clip, T, scale=0.05)
    tvs = [TaskVector.from_state_dicts(pre, ft) for ft in fts]
    return pre, tvs, [TaskComponents.from_task_vector(tv, 1 / T, attention="qkv") for tv in tvs]


def test_qkv_cache_holds_each_block_and_the_whole_matrix(tasks, tmp_path):
    _, tvs, comps = tasks
    blocks = qkv_names(IN_PROJ)
    assert set(blocks) | {IN_PROJ} <= set(comps[0].matrices)
    for j, name in enumerate(blocks):  # each block's cached components: its own top-k SVD (float64 reference)
        u, s, vh = torch.linalg.svd(tvs[0].vector[IN_PROJ].chunk(3)[j].double())
        k = comps[0].matrices[name].rank
        torch.testing.assert_close(comps[0].matrices[name].dense().double(), (u[:, :k] * s[:k]) @ vh[:k],
                                   atol=1e-5, rtol=1e-4)
    whole = TaskComponents.from_task_vector(tvs[0], 1 / T)
    assert set(comps[0].for_attention("in_proj").matrices) == set(whole.matrices)
    assert not set(comps[0].for_attention("qkv").matrices) & {IN_PROJ}
    comps[0].save(tmp_path / "qkv.safetensors")
    assert set(load_components([tmp_path / "qkv.safetensors"], "qkv")[0].matrices) >= set(blocks)
    whole.save(tmp_path / "whole.safetensors")
    with pytest.raises(ValueError, match=r"whole.safetensors holds each attention's in_proj_weight whole.*"
                                         r"merge\.attention"):
        load_components([tmp_path / "whole.safetensors"], "qkv")


@pytest.mark.parametrize("attention", ["in_proj", "qkv"])
def test_tsvm_matches_float64_re_derivation_in_both_layouts(tasks, attention):
    _, tvs, comps = tasks
    delta, accepted = tsv_merge([c.for_attention(attention) for c in comps])
    assert IN_PROJ in delta and not set(qkv_names(IN_PROJ)) & set(delta)
    expected = reference(tvs, IN_PROJ, attention)
    # float32 round-off, which depends on the BLAS's blocking: 9.4e-6 (in_proj) with 2 threads, 1.2e-5 with 1
    assert float((delta[IN_PROJ].double() - expected).norm() / expected.norm()) < 5e-5
    other = reference(tvs, IN_PROJ, "qkv" if attention == "in_proj" else "in_proj")
    assert float((delta[IN_PROJ].double() - other).norm() / other.norm()) > 0.1  # the layouts differ
    assert (qkv_names(IN_PROJ)[1] in accepted) == (attention == "qkv")


def test_epsilon_filter_judges_each_block_on_its_own():
    """Task 1's q block is twice task 0's (cosine 1) and its k, v blocks are unrelated: split, the filter
    drops task 1 from q only; whole, the cosine is ~0.47 and both tasks stay."""
    g = torch.Generator().manual_seed(3)
    a, kv = torch.randn(3 * 16, 16, generator=g), torch.randn(2 * 16, 16, generator=g)
    b = torch.cat([2 * a[:16], kv])
    comps = [TaskComponents.from_task_vector(TaskVector({IN_PROJ: w}), 1 / 2, attention="qkv") for w in (a, b)]
    _, split = tsv_merge([c.for_attention("qkv") for c in comps], epsilon=0.6)
    q, k, v = qkv_names(IN_PROJ)
    assert split == {q: [0], k: [0, 1], v: [0, 1]}
    _, whole = tsv_merge([c.for_attention("in_proj") for c in comps], epsilon=0.6)
    assert whole == {IN_PROJ: [0, 1]}


@pytest.mark.parametrize("dense_min_group", [12, 1])
def test_second_pass_with_qkv_blocks_equals_dense_merged_weights(tasks, dense_min_group):
    """Per-sample low-rank updates (12: every subset here is rarer) and written dense weights (1)."""
    pre, _, comps = tasks
    comps = [c.for_attention("qkv") for c in comps]
    images = np.random.default_rng(0).integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8)
    subsets = [(0,), (1, 2), (0, 1, 3), (3,), (1, 2), (0, 2)]
    selection = torch.zeros(len(images), T, dtype=torch.bool)
    for n, s in enumerate(subsets):
        selection[n, list(s)] = True
    model = MassModel(create_visual("mass-tiny-vit", pre), pre, comps, [], [], SIZE, alpha=0.7,
                      dense_min_group=dense_min_group)
    feats = model.features(images, selection, batch_size=4)
    for n, s in enumerate(subsets):
        delta, _ = tsv_merge([comps[i] for i in s], num_tasks=T)
        expected, _ = encode(create_visual("mass-tiny-vit", apply_delta(pre, delta, 0.7)), images[n:n + 1], SIZE)
        torch.testing.assert_close(feats[n:n + 1], expected, atol=1e-4, rtol=1e-4)
