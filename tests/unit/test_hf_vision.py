"""transformers CLIP image towers read in open_clip's layout (issue 29 item 2): a random transformers model,
converted, gives the same image features as open_clip's tower loaded with the converted weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from mass.encoder import create_visual
from mass.hf_vision import from_transformers, is_transformers_layout
from mass.io import ArtifactError, load_tensors, read_metadata
from mass_pipeline.sources.download import LockFile
from mass_pipeline.sources.fetch import fetch_finetuned
from mass_pipeline.sources.layouts import layout

# mass-tiny-vit (src/mass/model_configs) as transformers spells it: open_clip's default activation is exact
# GELU, transformers' "gelu"; 3 heads of width 32; MLP ratio 4.
TINY = dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, intermediate_size=384, image_size=32,
            patch_size=8, projection_dim=64, hidden_act="gelu", layer_norm_eps=1e-5)


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight drawn at random (transformers initialises layer norms to 1 / 0 and biases to 0, which
    would let a swapped norm or bias pass unnoticed); norm scales around 1 keep the activations in range."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


def _images(size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("config", "arch"), [(TINY, "mass-tiny-vit"), ({}, "ViT-B-32-quickgelu")],
                         ids=["tiny", "ViT-B-32-shaped"])
def test_converted_tower_gives_the_transformers_features(config, arch):
    """CLIPVisionConfig() is ViT-B/32's shape with quick_gelu, as OpenAI's checkpoints."""
    hf = _randomised(CLIPVisionModelWithProjection(CLIPVisionConfig(**config)), seed=0)
    state = hf.state_dict()
    assert is_transformers_layout(state)
    converted = from_transformers(state)
    visual = create_visual(arch, converted)  # strict load: every open_clip name filled, no name left over
    images = _images(hf.config.image_size)
    with torch.no_grad():
        want = hf(pixel_values=images).image_embeds
        got = visual(images)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def _bare(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tower without its projection as a bare CLIPVisionModel of transformers 4 names it, the names of
    FusionBench's files (written by transformers 4.47): ``vision_model.`` + the vision transformer's names."""
    return {k: v.detach().clone() for k, v in hf.state_dict().items() if k.startswith("vision_model.")}


@pytest.mark.parametrize("names", ["transformers 4", "transformers 5"])
def test_bare_vision_model_takes_the_pretrained_projection(names):
    """FusionBench's checkpoints are bare CLIPVisionModels (no projection: only the vision model was
    fine-tuned); the projection comes from theta_pre, and without one the conversion refuses. transformers 5
    names a CLIPVisionModel's tensors without the ``vision_model.`` prefix."""
    hf = _randomised(CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)), seed=2)
    state = _bare(hf)
    if names == "transformers 5":
        bare = CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()
        bare.load_state_dict({k.removeprefix("vision_model."): v for k, v in state.items()})
        state = bare.state_dict()
        assert not any(k.startswith("vision_model.") for k in state)
    assert is_transformers_layout(state)
    with pytest.raises(ValueError, match="no visual_projection"):
        from_transformers(state)
    proj = hf.visual_projection.weight.detach().t()
    visual = create_visual("mass-tiny-vit", from_transformers(state, projection=proj))
    images = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(visual(images), hf(pixel_values=images).image_embeds, rtol=1e-4, atol=1e-6)


def test_q_k_v_stack_in_open_clips_order_and_unknown_names_are_refused():
    """Hand case: in_proj is [q; k; v] row blocks; a name outside CLIP's layout is never half converted."""
    d = 4
    shapes = {"weight": (d, d), "bias": (d,)}
    block = {f"vision_model.encoder.layers.0.self_attn.{p}_proj.{kind}": torch.full(shape, float(i))
             for i, p in enumerate("qkv") for kind, shape in shapes.items()}
    out = from_transformers(block, projection=torch.eye(d))
    in_proj = out["transformer.resblocks.0.attn.in_proj_weight"]
    assert in_proj.shape == (3 * d, d) and [in_proj[i * d, 0].item() for i in range(3)] == [0.0, 1.0, 2.0]
    assert out["transformer.resblocks.0.attn.in_proj_bias"].tolist() == [0.0] * d + [1.0] * d + [2.0] * d
    with pytest.raises(ValueError, match="encoder.layers.0.adapter.weight has no open_clip counterpart"):
        from_transformers({**block, "vision_model.encoder.layers.0.adapter.weight": torch.zeros(1)},
                          projection=torch.eye(d))
    with pytest.raises(ValueError, match="q, k and v projections"):
        from_transformers({k: v for k, v in block.items() if "k_proj" not in k}, projection=torch.eye(d))


def test_fusionbench_encoder_is_fetched_from_the_hub_and_read_in_open_clips_layout(hub, tmp_path):
    """FusionBench's layout (tests/fixtures/sources/fusionbench.json): tanganke/clip-vit-<model>_<task>, a
    transformers CLIPVisionModel saved by transformers itself in model.safetensors, converted with theta_pre's
    projection; the catalog's EMNIST (digits) has no FusionBench encoder (its emnist_letters is another task)."""
    from support.hub_files import facts

    fact = facts("fusionbench")
    source = layout("fusionbench")
    assert (source.finetuned_repo.replace("{repo}", "{owner}"), source.finetuned_file) == (fact["finetuned_repo"],
                                                                                           fact["file"])
    assert dict(source.task_names) == fact["task_names"] and dict(source.model_names) == fact["model_names"]
    assert source.finetuned(fact["owner"], "ViT-B-32", "Cars").repo == "tanganke/clip-vit-base-patch32_stanford-cars"
    with pytest.raises(ValueError, match="no encoder for EMNIST.*finetuned.refinetune"):
        source.finetuned(fact["owner"], "ViT-B-32", "EMNIST")

    hf = _randomised(CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)), seed=4)
    config = {**CLIPVisionConfig(**TINY).to_dict(), "architectures": ["CLIPVisionModel"],
              "transformers_version": "4.47.0"}
    repo = source.finetuned(fact["owner"], "mass-tiny-vit", "Cars").repo
    hub.add(repo, "config.json", json.dumps(config).encode())  # what the repositories hold beside the weights
    hub.add(repo, "model.safetensors", save(_bare(hf), metadata={"format": "pt"}))  # as transformers 4.47 wrote it
    proj = hf.visual_projection.weight.detach().t().contiguous()
    out, lock = tmp_path / "Cars.safetensors", LockFile(tmp_path / "lock.json")
    fetch_finetuned("mass-tiny-vit", "Cars", fact["owner"], out, lock, endpoint=hub.url, layout="fusionbench",
                    projection=proj, retries=0)
    stored = load_tensors(out)
    assert read_metadata(out)["source"] == f"{repo}/model.safetensors"
    images = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(create_visual("mass-tiny-vit", stored)(images), hf(pixel_values=images).image_embeds,
                                   rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "Cars.hub.safetensors").exists()  # the download is removed once converted
    assert f"{repo}@main" in json.loads((tmp_path / "lock.json").read_text())["revisions"]
    with pytest.raises(ArtifactError, match="no visual_projection"):
        fetch_finetuned("mass-tiny-vit", "Cars", fact["owner"], tmp_path / "again.safetensors", lock, endpoint=hub.url,
                        layout="fusionbench", retries=0)
