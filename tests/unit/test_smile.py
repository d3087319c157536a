"""SMILE against a float64 re-derivation from its description, and hand cases for the gate, the vote and
the scoring (issue 28)."""

import numpy as np
import pytest
import torch
from support.synthetic import perturbed_encoders

from mass.encoder import create_visual
from mass.evaluation import correct_published, correct_strict
from mass.forward import encode
from mass.smile import Experts, SmileLinear, SmileModel
from mass.svd import LowRank, TaskComponents, truncated_svd
from mass.task_vectors import TaskVector, join_attention, split_attention

SIZE = 32


def smile_float64(x, w0, b0, deltas, bias_deltas, gate_k, k, top_k):
    """The layer from the description, in float64, token by token: gate ||V_{t,:gate_k}^T x||, softmax, top-k,
    renormalised; expert t = rank-k truncation of Delta_t plus its bias difference."""
    svds = [torch.linalg.svd(d.double(), full_matrices=False) for d in deltas]
    out = []
    for token in x.double():
        scores = torch.stack([(vh[:gate_k] @ token).norm() for _, _, vh in svds])
        w, chosen = torch.softmax(scores, 0).topk(top_k)
        w = w / w.sum()
        y = w0.double() @ token + b0.double()
        for weight, t in zip(w, chosen.tolist(), strict=True):
            u, s, vh = svds[t]
            y = y + weight * ((u[:, :k] * s[:k]) @ (vh[:k] @ token) + bias_deltas[t].double())
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("top_k", [1, 2])
def test_layer_matches_float64_re_derivation(top_k):
    g = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    deltas = [0.3 * torch.randn(24, 16, generator=g) for _ in range(3)]
    bias_deltas = [0.1 * torch.randn(24, generator=g) for _ in range(3)]
    factors = [LowRank(*truncated_svd(d, 8)) for d in deltas]  # what the SVD cache stores (r / 2)
    layer = SmileLinear(w0, b0, Experts.from_factors(factors, bias_deltas, gate_k=4, k=6), top_k, votes=True)
    x = torch.randn(2, 5, 16, generator=g)
    expected = smile_float64(x.reshape(-1, 16), w0, b0, deltas, bias_deltas, 4, 6, top_k).reshape(2, 5, 24)
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    assert layer.chosen.shape == (2, 5)


def test_top1_gate_picks_the_task_whose_subspace_holds_the_input():
    """Three tasks whose task matrices read orthogonal input directions (coordinates 0-3, 4-7, 8-11):
    an input in task 2's directions routes every token to task 2, whatever their lengths."""
    eye = torch.eye(12)
    factors = [LowRank(torch.eye(12)[:, 4 * t:4 * t + 4], torch.tensor([4.0, 3.0, 2.0, 1.0]), eye[:, 4 * t:4 * t + 4])
               for t in range(3)]
    layer = SmileLinear(torch.zeros(12, 12), torch.zeros(12),
                        Experts.from_factors(factors, [torch.zeros(12)] * 3, gate_k=4, k=4), 1, votes=True)
    x = torch.zeros(1, 6, 12)
    x[0, :, 8:12] = torch.randn(6, 4) * torch.arange(1.0, 7.0)[:, None]
    out = layer(x)
    assert layer.chosen.tolist() == [[2] * 6]
    torch.testing.assert_close(out[0, :, 8:12], x[0, :, 8:12] * torch.tensor([4.0, 3.0, 2.0, 1.0]))  # weight 1
    assert float(out[0, :, :8].abs().max()) == 0


def test_vote_is_the_mode_over_tokens_then_over_layers_ties_to_the_lower_task(tiny_clip):
    pre, fts = perturbed_encoders(tiny_clip, 3)
    comps = [TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 1 / 3) for ft in fts]
    model = SmileModel(create_visual("mass-tiny-vit", pre), pre, comps, gate_k=4, k=8, top_k=1)
    assert len(model.voters) == 6 * 3  # in_proj, c_fc, c_proj of the tiny ViT's 6 blocks; out_proj casts no vote
    for voter in model.voters:  # (N = 2 images, L = 3 tokens): tokens tied -> the lower task; 2, 1, 1 -> 1
        voter.chosen = torch.tensor([[0, 1, 2], [2, 1, 1]])
    assert model.head_vote().tolist() == [0, 1]
    for i, voter in enumerate(model.voters):
        voter.chosen = torch.tensor([[2, 2, 0], [0, 0, 2]] if i < 9 else [[1, 1, 2], [2, 2, 0]] if i < 17
                                    else [[1, 1, 0], [0, 0, 1]])
    # image 0: nine layers vote 2, nine vote 1 -> tied -> 1; image 1: ten layers vote 0, eight vote 2 -> 0
    assert model.head_vote().tolist() == [1, 0]


def dense_single_task(pre, tv, k, attention):
    """theta_pre with every linear weight plus the rank-k truncation (float64) of its task matrix (of each
    q, k, v block under "qkv") and its bias fine-tuned: SMILE with one task."""
    linear = split_attention(tv.vector) if attention == "qkv" else tv.vector
    out = {n: v.clone() for n, v in (split_attention(pre) if attention == "qkv" else pre).items()}
    for name, delta in linear.items():
        if name.startswith("transformer.") and delta.ndim == 2:
            u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
            out[name] = (out[name].double() + (u[:, :k] * s[:k]) @ vh[:k]).float()
        elif name.startswith("transformer.") and name.endswith("bias") and ("attn" in name or "mlp.c_" in name):
            out[name] = out[name] + delta
    return join_attention(out)


@pytest.mark.parametrize("attention", ["in_proj", "qkv"])
def test_one_task_model_equals_its_rank_k_linear_layers(tiny_clip, attention):
    """With one task the gate's weight is 1: the SMILE tower is theta_pre with each linear layer's rank-k
    expert and bias added (LayerNorms, patch and positional embeddings, projection pretrained)."""
    pre, (ft,) = perturbed_encoders(tiny_clip, 1, scale=0.05)
    tv = TaskVector.from_state_dicts(pre, ft)
    comps = [TaskComponents.from_task_vector(tv, 1 / 2, attention=attention).for_attention(attention)]
    model = SmileModel(create_visual("mass-tiny-vit", pre), pre, comps, gate_k=4, k=8, top_k=1)
    images = np.random.default_rng(0).integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
    feats, heads = model.predict(images, SIZE, batch_size=2)
    expected, _ = encode(create_visual("mass-tiny-vit", dense_single_task(pre, tv, 8, attention)), images, SIZE)
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)
    assert heads.tolist() == [0] * 5


def test_published_scoring_lets_a_wrong_head_hit_by_index_and_strict_does_not():
    heads = [torch.eye(3), torch.eye(3)[[2, 0]]]  # task 0: 3 classes; task 1: 2 classes, reading features 2 and 0
    features = torch.eye(3)[[1, 2, 0, 2]]
    head = torch.tensor([0, 0, 1, 1])
    true_task = torch.tensor([1, 1, 1, 0])
    labels = torch.tensor([1, 0, 1, 2])
    # 0: task 0's head, logits (0, 1, 0) cut to 2 -> class 1 = label, by index; 1: (0, 0, 1) cut to (0, 0) ->
    # class 0 = label; 2: the right head -> class 1; 3: task 1's head on a 3-class task, (1, 0) padded -> class 0
    assert correct_published(features, heads, head, true_task, labels).tolist() == [True, True, True, False]
    cls = torch.tensor([1, 2, 1, 0])  # each image's argmax over its chosen head's own classes
    assert correct_strict(head, cls, true_task, labels, ["a", "b"]).tolist() == [False, False, True, False]
