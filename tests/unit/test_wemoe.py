"""WEMoE against a float64 re-derivation from its description, hand cases for the initialisation and the
vote, and the adaptation lowering the entropy on a tiny model (issue 28)."""

import numpy as np
import torch
from support.synthetic import perturbed_encoders

from mass.baselines import task_arithmetic
from mass.encoder import create_visual
from mass.forward import encode
from mass.heads import head_logits
from mass.task_vectors import TaskVector
from mass.tsv import apply_delta
from mass.wemoe import MLP_KEYS, Router, WeightEnsemblingMLP, WEMoEModel, adapt, predict, ta_alpha, task_batches

SIZE = 32


def test_ta_alpha_is_the_final_codes_table_then_its_power_law():
    assert [ta_alpha(t) for t in (2, 8, 14, 20)] == [0.5, 0.3, 0.2, 0.1]
    assert ta_alpha(4) == 0.7733 * 4 ** -0.5517


def test_router_initialisation():
    router = Router(16, 5, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(router.fc2.bias, torch.full((5,), 0.3)) and torch.equal(router.fc1.bias, torch.zeros(16))
    assert 0.005 < float(router.fc1.weight.detach().std()) < 0.015
    assert 0.005 < float(router.fc2.weight.detach().std()) < 0.02


def test_mlp_matches_float64_re_derivation():
    g = torch.Generator().manual_seed(1)
    width, hidden, T = 8, 12, 3
    mlp = torch.nn.Sequential()
    mlp.gelu = torch.nn.GELU()
    pre = {"c_fc.weight": torch.randn(hidden, width, generator=g), "c_fc.bias": torch.randn(hidden, generator=g),
           "c_proj.weight": torch.randn(width, hidden, generator=g), "c_proj.bias": torch.randn(width, generator=g)}
    taus = {k: 0.1 * torch.randn(T, *v.shape, generator=g) for k, v in pre.items()}
    router = Router(width, T, 0.3, torch.Generator().manual_seed(2))
    with torch.no_grad():
        router.fc1.weight.mul_(30), router.fc2.weight.mul_(30)  # gates far from their initial 0.3
    layer = WeightEnsemblingMLP(mlp, pre, taus, router)
    x = torch.randn(4, 5, width, generator=g)
    out = layer(x)
    d = {k: v.double() for k, v in pre.items()}
    r1w, r1b, r2w, r2b = (p.detach().double() for p in (router.fc1.weight, router.fc1.bias, router.fc2.weight,
                                                         router.fc2.bias))
    gates = (torch.relu(x.double() @ r1w.T + r1b) @ r2w.T + r2b).mean(dim=1)  # per image, mean over tokens
    lam = gates.mean(dim=0)  # one merged MLP for the batch
    w = {k: d[k] + sum(lam[t] * taus[k][t].double() for t in range(T)) for k in MLP_KEYS}
    hidden_out = torch.nn.functional.gelu(x.double() @ w["c_fc.weight"].T + w["c_fc.bias"])
    expected = hidden_out @ w["c_proj.weight"].T + w["c_proj.bias"]
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    assert layer.chosen.tolist() == gates.argmax(dim=1).tolist()


def wemoe(tiny_clip, T):
    pre, fts = perturbed_encoders(tiny_clip, T, scale=0.05)
    tvs = [TaskVector.from_state_dicts(pre, ft) for ft in fts]
    base = apply_delta(pre, task_arithmetic(tvs, ta_alpha(T)))
    model = WEMoEModel(create_visual("mass-tiny-vit", base), pre,
                       lambda key: torch.stack([tv.vector[key] for tv in tvs]), T, init_lambda=ta_alpha(T))
    return pre, tvs, model


def test_with_silent_routers_it_is_task_arithmetic(tiny_clip):
    """Router weights zero: every gate is init_lambda, so with init_lambda = alpha_T the model is Task
    Arithmetic at alpha_T, the MLPs included."""
    pre, tvs, model = wemoe(tiny_clip, 3)
    with torch.no_grad():
        for p in model.routers():
            if p.ndim == 2:
                p.zero_()
    images = np.random.default_rng(0).integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
    feats, heads = predict(model, images, SIZE, batch_size=2)
    expected, _ = encode(create_visual("mass-tiny-vit", apply_delta(pre, task_arithmetic(tvs, 0.4))), images, SIZE)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    assert heads.tolist() == [0] * 5  # equal gates: every block's argmax and the vote go to the first task


def test_vote_is_the_mode_over_blocks(tiny_clip):
    _, _, model = wemoe(tiny_clip, 3)
    for i, mlp in enumerate(model.moe):  # 6 blocks; image 0: 2, 2, 2, 1, 1, 0 -> 2; image 1: 1, 1, 0, 0, 2, 2 -> 0
        mlp.chosen = torch.tensor([[2, 2, 2, 1, 1, 0][i], [1, 1, 0, 0, 2, 2][i]])
    assert model.head_vote().tolist() == [2, 0]


def test_adaptation_lowers_the_entropy_and_trains_only_the_routers(tiny_clip):
    pre, _, model = wemoe(tiny_clip, 2)
    g = torch.Generator().manual_seed(3)
    heads = [torch.randn(5, 64, generator=g) * 5, torch.randn(4, 64, generator=g) * 5]
    rng = np.random.default_rng(1)
    sources = [task_batches(rng.integers(0, 256, size=(6, SIZE, SIZE, 3), dtype=np.uint8), SIZE, 4) for _ in heads]
    frozen = {k: v.clone() for k, v in model.visual.state_dict().items() if "router" not in k}
    routers = [p.detach().clone() for p in model.routers()]
    losses = adapt(model, sources, heads, steps=12, lr=1e-2, logits=head_logits)
    assert len(losses) == 12 and losses[-1] < 0.9 * losses[0], losses
    after = model.visual.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert all(not torch.equal(p, before) for p, before in zip(model.routers(), routers, strict=True))
