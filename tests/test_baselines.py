"""Merging baselines: closed forms and limiting cases."""

import torch

from mass.baselines import consensus, iso_c, iso_cts, tall_masks, task_arithmetic, weight_average
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
