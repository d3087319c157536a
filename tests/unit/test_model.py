"""Model-level checks on a real open_clip ViT (tiny config, random weights)."""

import numpy as np
import pytest
import torch
from support.synthetic import perturbed_encoders

from mass.encoder import FirstPassProbe, all_layers, create_visual
from mass.forward import encode, first_pass, layer_bases
from mass.heads import build_zero_shot_head, encode_text, head_logits, tokenizer_for
from mass.mass_model import MassModel, predict_over_heads
from mass.routing import projection_residuals
from mass.svd import TaskComponents
from mass.task_vectors import LayerId, Location, TaskVector
from mass.tsv import apply_delta, tsv_merge

SIZE = 32


@pytest.fixture(scope="module")
def setup(tiny_clip):
    pre, fts = perturbed_encoders(tiny_clip, 3, scale=0.05)
    comps = [TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 1 / 3) for ft in fts]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, SIZE, SIZE, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(0)
    heads = [torch.randn(c, 64, generator=g) * 10 for c in (4, 5, 3)]
    return pre, comps, images, heads


def test_probe_reads_cls_token_of_batch_first_activations(setup):
    pre, comps, images, _ = setup
    visual = create_visual("mass-tiny-vit", pre)
    layer = LayerId(2, "mlp", "in")
    bases = layer_bases(comps, [layer], num_tasks=3)
    seen = {}
    handle = visual.transformer.resblocks[2].ln_2.register_forward_hook(
        lambda m, a, out: seen.__setitem__("x", out.detach()))
    feats, res = first_pass(visual, images, SIZE, bases, tokens=("cls", "mean"), batch_size=16)
    handle.remove()
    x = seen["x"]
    assert x.shape[:2] == (10, 17)  # batch first, 16 patches + CLS
    torch.testing.assert_close(res[Location(layer, "cls")], projection_residuals(x[:, 0], bases[layer]))
    torch.testing.assert_close(res[Location(layer, "mean")], projection_residuals(x.mean(1), bases[layer]))
    plain, _ = encode(visual, images, SIZE)
    torch.testing.assert_close(feats, plain)  # the probe does not change the forward pass


def test_probe_covers_every_layer_and_output_side(setup):
    pre, comps, images, _ = setup
    visual = create_visual("mass-tiny-vit", pre)
    layers = all_layers(6, ios=("in", "out"))
    _, res = first_pass(visual, images, SIZE, layer_bases(comps, layers, 3), batch_size=4)
    assert len(res) == 24 and all(v.shape == (10, 3) for v in res.values())
    with FirstPassProbe(visual, layer_bases(comps, layers[:1], 3)) as probe:
        assert len(probe._handles) == 1
    assert not visual.transformer.resblocks[0].attn._forward_pre_hooks


def test_routing_only_first_pass_skips_the_layers_after_the_routing_location(setup):
    pre, comps, images, _ = setup
    visual = create_visual("mass-tiny-vit", pre)
    layers = [LayerId(1, "attn", "out"), LayerId(2, "mlp", "in")]
    bases = layer_bases(comps, layers, 3)
    feats, full = first_pass(visual, images, SIZE, bases, tokens=("cls", "mean"), batch_size=4)
    ran = {"mlp2": 0, "block3": 0}
    hooks = [visual.transformer.resblocks[2].mlp.register_forward_hook(lambda *a: ran.__setitem__("mlp2", 1)),
             visual.transformer.resblocks[3].register_forward_hook(lambda *a: ran.__setitem__("block3", 1))]
    early_feats, early = first_pass(visual, images, SIZE, bases, tokens=("cls", "mean"), batch_size=4,
                                    routing_only=True)
    assert ran == {"mlp2": 0, "block3": 0} and early_feats.numel() == 0
    assert early.keys() == full.keys()
    for key in full:
        torch.testing.assert_close(early[key], full[key])
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(encode(visual, images, SIZE)[0], feats)  # the model is left intact


def test_mass_with_forced_true_task_equals_single_task_tsvm_model(setup):
    pre, comps, images, heads = setup
    visual = create_visual("mass-tiny-vit", pre)
    model = MassModel(visual, pre, comps, heads, ["a", "b", "c"], SIZE)
    true_task = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    selection = torch.nn.functional.one_hot(true_task, 3).bool()
    pred = model.predict(images, selection, batch_size=3)
    assert pred.task.tolist() == true_task.tolist()
    for t in range(3):
        delta, _ = tsv_merge([comps[t]], num_tasks=3)
        ref = create_visual("mass-tiny-vit", apply_delta(pre, delta))
        idx = np.nonzero(true_task.numpy() == t)[0]
        feats, _ = encode(ref, images[idx], SIZE)
        torch.testing.assert_close(pred.cls[idx], head_logits(feats, heads[t]).argmax(1))


def test_multi_head_argmax_and_shared_heads():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    heads = [torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.0, 2.0], [3.0, 0.0]])]
    task, cls = predict_over_heads(feats, heads, [0, 1])
    assert task.tolist() == [1, 1] and cls.tolist() == [1, 0]
    model = MassModel(None, {}, [None, None, None], heads + [heads[1]], ["x", "s", "s"], SIZE)
    assert model.candidate_heads((0, 1, 2)) == [0, 1]
    from mass.mass_model import Predictions
    ok = model.is_correct(Predictions(torch.tensor([2, 0]), torch.tensor([1, 1])),
                          torch.tensor([1, 0]), torch.tensor([1, 0]))
    assert ok.tolist() == [True, False]


def test_zero_shot_head_is_normalised_and_scaled(tiny_clip):
    head = build_zero_shot_head(tiny_clip, tokenizer_for("mass-tiny-vit"), ["cat", "dog"],
                                ["a photo of a {c}.", "a {c}."])
    scale = float(tiny_clip.logit_scale.exp())
    torch.testing.assert_close(head.norm(dim=-1), torch.full((2,), scale))


def test_text_cut_at_the_end_of_text_encodes_as_the_full_context(tiny_clip):
    tokens = tokenizer_for("mass-tiny-vit")(["a photo of a cat.", "a rendering of a large red fire truck."])
    with torch.no_grad():
        torch.testing.assert_close(encode_text(tiny_clip, tokens), tiny_clip.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_encoder_loaded_from_a_state_dict_has_exactly_its_weights_and_shares_none():
    """create_visual skips the random initialisation when weights are given (meta build, then a copy):
    every tensor must come from the state dict, and changing the tower must not change the dict."""
    torch.manual_seed(1)
    weights = {k: torch.randn_like(v) for k, v in create_visual("mass-tiny-vit").state_dict().items()}
    kept = {k: v.clone() for k, v in weights.items()}
    visual = create_visual("mass-tiny-vit", weights)
    assert not visual.training
    assert all(torch.equal(visual.state_dict()[k], v) for k, v in weights.items())
    with torch.no_grad():
        for p in visual.parameters():
            p.add_(1.0)
    assert all(torch.equal(weights[k], v) for k, v in kept.items())
    with pytest.raises(ValueError, match="do not fit the architecture"):
        create_visual("mass-tiny-vit", {k: v for k, v in weights.items() if k != "proj"})


def test_published_scoring_fits_the_chosen_head_to_the_true_class_count_by_hand():
    """Both editions' code: the chosen head's logits cut to (or zero-padded up to) the evaluated task's class
    count, then argmax against the label; a wrong head can hit by index coincidence, the strict score never."""
    from mass.evaluation import fit_to_classes
    from mass.mass_model import Predictions
    logits = torch.tensor([[1.0, 5.0, 9.0], [-2.0, -1.0, -3.0]])
    assert fit_to_classes(logits, 2).tolist() == [[1.0, 5.0], [-2.0, -1.0]]
    assert fit_to_classes(logits, 4).tolist() == [[1.0, 5.0, 9.0, 0.0], [-2.0, -1.0, -3.0, 0.0]]
    # head 0: 3 classes; head 1: 2 classes; features are one-hot so logits are the head's columns
    heads = [torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
             torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])]
    model = MassModel(None, {}, [None, None], heads, ["a", "b"], SIZE)
    feats = torch.nn.functional.normalize(torch.tensor([
        [0.1, 0.2, 0.9],    # true task 1 (2 classes), chosen head 0: cut to 2 columns -> argmax 1 == label 1: hit
        [0.1, 0.2, 0.9],    # same, label 0: miss
        [0.9, 0.1, 0.0],    # true task 0 (3 classes), chosen head 1: padded [0.0, 0.1, 0] -> argmax 1 == label 1: hit
        [0.0, 0.3, 0.9],    # chosen head 1 is the true one: class argmax 0 == label 0: hit (strict too)
    ]), dim=1)
    pred = Predictions(torch.tensor([0, 0, 1, 1]), torch.tensor([2, 2, 1, 0]), feats)
    true_task, labels = torch.tensor([1, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    assert model.is_correct_published(pred, true_task, labels).tolist() == [True, False, True, True]
    assert model.is_correct(pred, true_task, labels).tolist() == [False, False, False, True]
    # all logits of a chosen smaller head negative: a padded zero wins, at the first padded index
    neg = Predictions(torch.tensor([1]), torch.tensor([0]), torch.tensor([[0.0, -1.0, -1.0]]))
    assert model.is_correct_published(neg, torch.tensor([0]), torch.tensor([2])).tolist() == [True]
