"""Routers: residual geometry, softmax scale, selection rules."""

import math

import pytest
import torch
from support.synthetic import random_orthonormal

from mass.routing import (
    MLPRouter,
    NearestNeighbourRouter,
    ProjectionRouter,
    batched_route,
    projection_residuals,
    routing_weights,
    select_tasks,
)


def test_residual_zero_inside_span_and_norm_outside():
    q = random_orthonormal(12, 6, 0)
    bases = torch.stack([q[:, :3], q[:, 3:]])
    inside = q[:, :3] @ torch.tensor([1.0, -2.0, 0.5])
    r = projection_residuals(inside[None], bases)[0]
    assert float(r[0]) == pytest.approx(0.0, abs=1e-3)
    assert float(r[1]) == pytest.approx(float(inside.norm()), rel=1e-5)


def test_residual_of_an_input_almost_in_a_subspace_is_accurate_against_float64():
    """Inputs within 1e-3 of a task's subspace (||z|| ~ 100, as CLS features are): the residual and the
    standardised weights eta thresholds match the direct float64 computation."""
    torch.manual_seed(0)
    d, k, T = 768, 38, 8
    bases = torch.stack([random_orthonormal(d, k, t) for t in range(T)])
    inside = (torch.randn(64, k).double() * 17) @ bases[0].double().T
    distance = torch.logspace(-4, -3, 64).double()[:, None]
    off = torch.nn.functional.normalize(torch.randn(64, d).double(), dim=1) * distance
    z = inside + off
    b64 = bases.double()
    exact = (z[:, None, :] - torch.einsum("ntk,tdk->ntd", torch.einsum("nd,tdk->ntk", z, b64), b64)).norm(dim=-1)
    got = projection_residuals(z.float(), bases)
    assert float(z.norm(dim=1).min()) > 50 and float(exact[:, 0].max()) < 2e-3
    torch.testing.assert_close(got[:, 0].double(), exact[:, 0], rtol=0.05, atol=0.0)  # the shortcut: 0 to 300x off
    torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(routing_weights(got), routing_weights(exact), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("T,expected", [(8, 0.71), (14, 0.76), (20, 0.82)])
def test_standardised_softmax_weight_of_a_clear_winner(T, expected):
    residuals = torch.ones(1, T)
    residuals[0, 3] = 0.0
    w = routing_weights(residuals)
    assert float(w[0, 3]) == pytest.approx(math.exp(math.sqrt(T)) / (math.exp(math.sqrt(T)) + T - 1), rel=1e-4)
    assert float(w[0, 3]) == pytest.approx(expected, abs=0.01)
    plain = routing_weights(residuals, standardize=False)
    assert float(plain[0, 3]) == pytest.approx(math.e / (math.e + T - 1))


def test_select_strict_threshold_topk_and_argmax_fallback():
    w = torch.tensor([[0.4, 0.3, 0.2, 0.1],   # three pass eta=0.15 but top_k=2
                      [0.2, 0.3, 0.25, 0.25],  # nothing passes 0.35 -> argmax
                      [0.2, 0.2, 0.3, 0.3]])  # 0.2 is not > 0.2 (strict)
    assert select_tasks(w[:1], 0.15, 2).tolist() == [[True, True, False, False]]
    assert select_tasks(w[1:2], 0.35, 3).tolist() == [[False, True, False, False]]
    assert select_tasks(w[2:], 0.2, 4).tolist() == [[False, False, True, True]]
    sel = select_tasks(torch.softmax(torch.randn(100, 8), -1), 0.01, 3)
    assert int(sel.sum(-1).max()) <= 3 and bool(sel.any(-1).all())


def test_projection_router_picks_the_subspace_containing_z():
    q = random_orthonormal(16, 8, 1)
    bases = torch.stack([q[:, 2 * t:2 * t + 2] for t in range(4)])
    z = torch.stack([q[:, 2 * t] * 3 + 0.01 * q[:, 2 * ((t + 1) % 4)] for t in range(4)])
    sel = ProjectionRouter(eta=0.5, top_k=1).route(z, bases)
    assert sel.float().argmax(-1).tolist() == [0, 1, 2, 3]
    assert batched_route(projection_residuals(z[2:3].repeat(5, 1), bases)) == 2


def test_nn_and_mlp_routers_learn_separable_tasks():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(50)
    feats = centres[labels] + torch.randn(150, 8, generator=g)
    test = centres[labels] + torch.randn(150, 8, generator=g)
    nn_acc = (NearestNeighbourRouter().fit(feats, labels).predict(test) == labels).float().mean()
    mlp = MLPRouter(8, 3, hidden=64).fit(feats, labels, epochs=30, seed=0)
    mlp_acc = (mlp.predict(test) == labels).float().mean()
    assert nn_acc > 0.9 and mlp_acc > 0.9
    again = MLPRouter(8, 3, hidden=64).fit(feats, labels, epochs=30, seed=0)
    torch.testing.assert_close(again(test), mlp(test))
