"""What a method costs (mass.cost, issue 28 items 4-5): multiply-adds counted by torch, the floor of exact
per-sample merging, parameters kept; hand cases, and the floor against MASS's own count."""

import numpy as np
import pytest
import torch
from support.synthetic import perturbed_encoders

from mass.cost import best_times, count_macs, exact_merge_macs, held_parameters, mass_parameters, tokens_per_matrix
from mass.encoder import create_visual
from mass.forward import encode
from mass.mass_model import MassModel
from mass.smile import Experts
from mass.svd import LowRank, TaskComponents
from mass.task_vectors import TaskVector

SIZE = 32


def test_linear_and_in_place_addmm_are_counted_as_their_multiply_adds():
    x, w = torch.randn(5, 7, 6), torch.randn(4, 6)
    assert count_macs(lambda: torch.nn.functional.linear(x, w)) == 5 * 7 * 6 * 4
    y, a, b = torch.zeros(3, 4), torch.randn(3, 5), torch.randn(5, 4)
    assert count_macs(lambda: y.addmm_(a, b)) == 3 * 5 * 4  # not in torch's own registry
    y3, a3, b3 = torch.zeros(2, 3, 4), torch.randn(2, 3, 5), torch.randn(2, 5, 4)
    assert count_macs(lambda: y3.baddbmm_(a3, b3)) == 2 * 3 * 5 * 4


def lowrank(m: int, n: int, k: int) -> LowRank:
    return LowRank(torch.zeros(m, k), torch.ones(k), torch.zeros(n, k))


def test_exact_merge_floor_hand_case():
    """One 4 x 6 matrix, T = 2 (k = 2), 5 tokens per sample. Task 0 alone for 3 samples: per sample
    3 * 5 * 2 * (4 + 6) = 300, dense 4 * 6 * 2 = 48 -> 48. Tasks {0, 1} for one sample (s k = 4, with the
    square factors): per sample 5 * (4 * 10 + 2 * 16) = 360, dense 4 * 24 + 10 * 16 = 256 -> 256."""
    comps = [TaskComponents({"w": lowrank(4, 6, 3)}, {}) for _ in range(2)]
    selection = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1]], dtype=torch.bool)
    assert exact_merge_macs(comps, selection, {"w": 5}) == 48 + 256
    assert exact_merge_macs(comps, selection[:1], {"w": 5}) == min(5 * 2 * 10, 48) == 48
    assert exact_merge_macs(comps, selection[:1], {"w": 1}) == 20  # one token: per sample is cheaper
    assert exact_merge_macs(comps, selection, {}) == 0


def test_held_parameters_counts_a_shared_storage_once_and_reaches_tensors_kept_as_attributes():
    layer = torch.nn.Linear(6, 4)  # 24 + 4
    layer.view = layer.weight.data[:2]  # a view of the same storage and offset as the weight: counted once
    layer.experts = Experts(torch.zeros(2, 6), torch.zeros(1, 2, 6), torch.zeros(1, 4, 2), torch.zeros(1, 4))
    assert held_parameters(layer) == 24 + 4 + 12 + 12 + 8 + 4
    assert held_parameters({"a": torch.zeros(3, 3), "b": torch.zeros(2)}) == 11


def test_mass_parameters_hand_case():
    """theta_pre 4 x 6 + 4; each of T = 2 tasks keeps k = floor(4 / 2) = 2 triplets (2 * (4 + 6 + 1)) and
    its bias difference (4)."""
    pre = {"w": torch.zeros(4, 6), "b": torch.zeros(4)}
    comps = [TaskComponents({"w": lowrank(4, 6, 3)}, {"b": torch.zeros(4)}) for _ in range(2)]
    assert mass_parameters(pre, comps) == 28 + 2 * (22 + 4)


def test_best_times_times_every_step_and_rejects_no_rounds():
    calls = []
    best = best_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2)
    assert calls == ["a", "b", "a", "b"] and set(best) == {"a", "b"} and min(best.values()) >= 0
    with pytest.raises(ValueError, match="repeats"):
        best_times({"a": lambda: None}, repeats=0)


@pytest.mark.parametrize("dense_min_group", [10**9, 2])
def test_mass_second_pass_costs_at_least_the_forward_plus_the_exact_merge_floor(tiny_clip, dense_min_group):
    """The floor is a floor: MASS's second pass, counted by torch once its subset factors are cached, on
    mixed subsets (low-rank path) and with dense weights for every pair of samples sharing a subset, is
    never cheaper than the forward plus exact_merge_macs (it was, before the in-place addmm_ was counted)."""
    pre, fts = perturbed_encoders(tiny_clip, 3)
    comps = [TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 0.5) for ft in fts]
    images = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    selection = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1],
                              [1, 1, 1]], dtype=torch.bool)
    visual = create_visual("mass-tiny-vit", pre)
    heads = [torch.randn(5, visual.output_dim) for _ in range(3)]
    model = MassModel(create_visual("mass-tiny-vit", pre), pre, comps, heads, ["a", "b", "c"], SIZE,
                      dense_min_group=dense_min_group)
    forward = count_macs(lambda: encode(visual, images, SIZE, 8))
    model.predict(images, selection, 8)  # the Gram blocks and subset factors, cached across batches
    second = count_macs(lambda: model.predict(images, selection, 8))
    floor = exact_merge_macs(comps, selection, tokens_per_matrix(visual, SIZE))
    assert floor > 0 and second >= forward + floor
