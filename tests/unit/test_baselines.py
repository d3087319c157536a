"""Merging baselines: closed forms and limiting cases."""

import pytest
import torch

import mass.baselines
from mass.baselines import consensus, iso_c, iso_cts, iso_cts_dimensions, tall_masks, task_arithmetic, weight_average
from mass.task_vectors import TaskVector

NAME = "transformer.resblocks.1.mlp.c_fc.weight"


def test_weight_average_and_task_arithmetic(task_vectors):
    _, tvs = task_vectors
    total = sum(tv.vector[NAME] for tv in tvs)
    torch.testing.assert_close(weight_average(tvs)[NAME], total / 3)
    torch.testing.assert_close(task_arithmetic(tvs, 0.3)[NAME], 0.3 * total)


def test_consensus_with_agreement_above_T_is_zero_shot(task_vectors):
    _, tvs = task_vectors
    merged = consensus(tvs, [0.2, 0.4, 0.6], alpha=1.0, min_agreement=4)
    assert all(float(v.abs().max()) == 0 for v in merged.values())


def test_tall_mask_hand_case():
    a = TaskVector({"w": torch.tensor([[1.0, 0.1]])})
    b = TaskVector({"w": torch.tensor([[0.1, 1.0]])})
    masks = tall_masks([a, b], [0.5, 0.5])
    assert masks[0]["w"].tolist() == [[True, False]]
    assert masks[1]["w"].tolist() == [[False, True]]
    # each weight is selected by one task only: consensus (>= 2) keeps nothing, >= 1 keeps all
    assert consensus([a, b], [0.5, 0.5], alpha=1.0)["w"].abs().sum() == 0
    torch.testing.assert_close(consensus([a, b], [0.5, 0.5], 1.0, min_agreement=1)["w"],
                               torch.tensor([[1.1, 1.1]]))


def test_tall_masks_and_consensus_follow_their_definition_and_sum_the_tasks_once(monkeypatch):
    """m_t = |tau_t| > lambda_t |tau_MTL - tau_t| (the published code's form, tau_MTL = sum_j tau_j) on random
    task vectors, and Consensus TA keeps sum_t tau_t where at least two masks agree. Each key's task
    vectors are stacked once for all T masks: the step builds T masks per lambda, and re-summing all T
    task vectors per mask made Consensus TA quadratic in T (4 min 21 s for 20 tasks at ViT-B/32)."""
    g = torch.Generator().manual_seed(0)
    keys, T, lambdas = ("a", "b"), 6, [0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
    tvs = [TaskVector({k: torch.randn(7, 5, generator=g) for k in keys}) for _ in range(T)]
    stacks = []
    real_stack = mass.baselines._stack
    monkeypatch.setattr(mass.baselines, "_stack", lambda tv, key: stacks.append(key) or real_stack(tv, key))
    masks = tall_masks(tvs, lambdas)
    merged = consensus(tvs, lambdas, alpha=0.7)
    assert sorted(stacks) == sorted(keys * 2)  # once per key and call, not once per key and task
    for k in keys:
        total = torch.stack([tv.vector[k] for tv in tvs]).sum(0)
        expected = [tv.vector[k].abs() > lam * (total - tv.vector[k]).abs()
                    for tv, lam in zip(tvs, lambdas, strict=True)]
        for mask, want in zip(masks, expected, strict=True):
            assert torch.equal(mask[k], want)
        votes = torch.stack(expected).sum(0)
        assert 0 < int((votes >= 2).sum()) < votes.numel()
        torch.testing.assert_close(merged[k], 0.7 * (votes >= 2) * total, rtol=0, atol=0)


def test_iso_c_has_flat_spectrum_and_keeps_subspace(task_vectors):
    _, tvs = task_vectors
    merged = iso_c(tvs, alpha=1.0)[NAME]
    s = torch.linalg.svdvals(merged)
    total_s = torch.linalg.svdvals(sum(tv.vector[NAME] for tv in tvs))
    torch.testing.assert_close(s, torch.full_like(s, float(total_s.mean())), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(iso_c(tvs, alpha=2.0)[NAME], 2 * merged)


def test_iso_cts_flat_spectrum_full_rank(task_vectors):
    _, tvs = task_vectors
    merged = iso_cts(tvs, alpha=1.0, common_fraction=0.8)[NAME]
    s = torch.linalg.svdvals(merged)
    assert torch.linalg.matrix_rank(merged) == min(merged.shape)
    assert float(s.max() / s.min()) < 1.001


@pytest.mark.parametrize("method", [iso_c, iso_cts])
def test_iso_alpha_scales_the_averaged_tensors_too(task_vectors, method):
    """Both published implementations multiply the whole merged update, biases, LayerNorms, the
    patch conv and the class embedding included, by alpha."""
    _, tvs = task_vectors
    merged = method(tvs, alpha=2.5)
    for key in ("conv1.weight", "class_embedding", "ln_pre.weight", "transformer.resblocks.0.attn.in_proj_bias"):
        torch.testing.assert_close(merged[key], 2.5 * torch.stack([tv.vector[key] for tv in tvs]).mean(0))


# Iso-CTS subspace sizes by the published rule: per task p = round((r - int(0.8 r)) / T), Python's
# round (half to even), and the common subspace gets the rest, r - T p. Worked by hand:
#   r = 50:   int(40.0) = 40,   rest 10:  T=8 10/8=1.25->1, T=14 0.71->1, T=20 0.5->0 (half to even)
#   r = 197:  int(157.6) = 157, rest 40:  T=8 5, T=14 2.86->3, T=20 2
#   r = 257:  int(205.6) = 205, rest 52:  T=8 6.5->6 (half to even), T=14 3.71->4, T=20 2.6->3
#   r = 512:  int(409.6) = 409, rest 103: T=8 12.875->13, T=14 7.36->7, T=20 5.15->5
#   r = 768:  int(614.4) = 614, rest 154: T=8 19.25->19, T=14 11, T=20 7.7->8
#   r = 1024: int(819.2) = 819, rest 205: T=8 25.625->26, T=14 14.64->15, T=20 10.25->10
ISO_CTS_SIZES = {  # (r, T): (common, per task)
    (50, 8): (42, 1), (50, 14): (36, 1), (50, 20): (50, 0),
    (197, 8): (157, 5), (197, 14): (155, 3), (197, 20): (157, 2),
    (257, 8): (209, 6), (257, 14): (201, 4), (257, 20): (197, 3),
    (512, 8): (408, 13), (512, 14): (414, 7), (512, 20): (412, 5),
    (768, 8): (616, 19), (768, 14): (614, 11), (768, 20): (608, 8),
    (1024, 8): (816, 26), (1024, 14): (814, 15), (1024, 20): (824, 10),
}


@pytest.mark.parametrize("rank,num_tasks", list(ISO_CTS_SIZES))
def test_iso_cts_subspace_sizes_follow_the_published_rounding(rank, num_tasks):
    assert iso_cts_dimensions(rank, num_tasks, 0.8) == ISO_CTS_SIZES[rank, num_tasks]


@pytest.mark.parametrize("method", [iso_c, iso_cts])
def test_merge_survives_a_float32_svd_that_does_not_converge(task_vectors, monkeypatch, method):
    """MKL's float32 SVD (torch's CPU SVD) failed to converge on a well-conditioned 768 x 768 Iso-CTS
    basis in the dress rehearsal (condition number 2.3e3; float64, OpenBLAS and scipy decompose it).
    That matrix exists only at ViT-B size, so the failure is replayed here: torch's float32 SVD raises
    LinAlgError as MKL did, and the merge must come out as with a converging SVD, from float64."""
    _, tvs = task_vectors
    expected = method(tvs, alpha=1.0)[NAME]
    real_svd = torch.linalg.svd
    refused = []

    def svd_failing_in_float32(x, *args, **kwargs):
        if x.dtype == torch.float32:
            refused.append(tuple(x.shape))
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (error code: 1).")
        return real_svd(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", svd_failing_in_float32)
    merged = method(tvs, alpha=1.0)[NAME]
    assert refused and merged.dtype == torch.float32
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)


def test_every_baseline_from_files_equals_the_one_from_memory_and_consensus_holds_one_task(tmp_path, monkeypatch):
    """Task vectors read from the fine-tuned encoders' files (TaskVectorFiles: layer by layer, or one task at a
    time) give every baseline bit for bit; Consensus TA never holds two task vectors at once, whatever T."""
    import gc
    import weakref

    from mass.io import load_tensors, save_tensors
    from mass.task_vectors import TaskVectorFiles

    g = torch.Generator().manual_seed(3)
    pre = {"visual.w": torch.randn(12, 9, generator=g), "visual.b": torch.randn(9, generator=g),
           "visual.steps": torch.tensor([3])}  # an integer buffer: not part of a task vector
    paths = []
    for t in range(7):
        ft = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in pre.items()}
        save_tensors(tmp_path / f"t{t}.safetensors", ft)
        paths.append(tmp_path / f"t{t}.safetensors")
    files = TaskVectorFiles(pre, paths)
    memory = [TaskVector.from_state_dicts(pre, load_tensors(p)) for p in paths]
    lambdas = [0.2, 0.4, 0.5, 0.6, 0.8, 1.0, 0.3]
    for build in (lambda tv: weight_average(tv), lambda tv: task_arithmetic(tv, 0.3), lambda tv: iso_c(tv, 1.2),
                  lambda tv: iso_cts(tv, 0.9), lambda tv: consensus(tv, lambdas, 0.7)):
        ours, reference = build(files), build(memory)
        assert ours.keys() == reference.keys() == {"w", "b"}
        assert all(torch.equal(ours[k], reference[k]) for k in ours)
    made: dict[str, list] = {"task vectors": [], "masks": []}
    peak = dict.fromkeys(made, 0)

    def track(kind: str, tensor: torch.Tensor) -> None:
        gc.collect()
        made[kind].append(weakref.ref(tensor))
        peak[kind] = max(peak[kind], sum(r() is not None for r in made[kind]))

    real_vector, real_mask = TaskVectorFiles.__getitem__, mass.baselines.tall_mask
    monkeypatch.setattr(TaskVectorFiles, "__getitem__",
                        lambda self, t: (v := real_vector(self, t), track("task vectors", v.vector["w"]))[0])
    monkeypatch.setattr(mass.baselines, "tall_mask",
                        lambda own, total, lam: (m := real_mask(own, total, lam), track("masks", m["w"]))[0])
    consensus(files, lambdas, 0.7)
    assert len(made["task vectors"]) == len(made["masks"]) == 7
    assert peak == {"task vectors": 1, "masks": 1}  # the agreement is a running count


def _iso_cts_float64(stack: torch.Tensor, common_fraction: float) -> torch.Tensor:
    """Iso-CTS of one matrix as the published code writes it (project each task's matrix off the common
    subspace, then decompose it whole), in the stack's dtype (float64 for the reference)."""
    def svd(x):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return u, s, vh.mT

    def polar(x):
        p, _, q = svd(x)
        return p @ q.T
    common, per_task = iso_cts_dimensions(min(stack.shape[1:]), stack.shape[0], common_fraction)
    u, s, v = svd(stack.sum(0))
    us, ss, vs = [u[:, :common]], [s[:common]], [v[:, :common]]
    for delta in stack:
        ut, st, vt = svd(delta - us[0] @ (us[0].T @ delta))
        us.append(ut[:, :per_task]), ss.append(st[:per_task]), vs.append(vt[:, :per_task])
    return torch.cat(ss).mean() * (polar(torch.cat(us, 1)) @ polar(torch.cat(vs, 1)).T)


@pytest.mark.parametrize("shape", [(40, 120), (64, 64), (120, 40)], ids=["wide", "square", "tall"])
@pytest.mark.parametrize("kind", ["random", "near-duplicate"])
def test_iso_cts_equals_the_published_formulation_in_float64(shape, kind):
    """The complement-subspace SVD (m <= n) and the direct projection (m > n) give the published
    formulation's update to float32 round-off, on independent tasks and on tasks that nearly coincide."""
    g = torch.Generator().manual_seed(sum(shape) + len(kind))
    T = 6
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "random":
        stack = torch.randn((T, *shape), generator=g, dtype=torch.float64)
    else:
        stack = base + 0.01 * torch.randn((T, *shape), generator=g, dtype=torch.float64)
    expected = _iso_cts_float64(stack, 0.8)
    got = iso_cts([TaskVector({"w": d.float()}) for d in stack], alpha=1.0)["w"].double()
    published_in_float32 = _iso_cts_float64(stack.float(), 0.8).double()  # the same formulation in float32
    scale = float(expected.abs().max())
    error, round_off = float((got - expected).abs().max()), float((published_in_float32 - expected).abs().max())
    assert error <= 2 * round_off + 1e-6 * scale and error <= 1e-4 * scale, (error, round_off, scale)
