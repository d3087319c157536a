"""Your own fine-tuned encoders (finetuned.files, issue 29 item 2): any layout the sources publish is read,
checked against the backbone and stored; the rules use it instead of the source; its provenance is reported,
never held against the run."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file
from support.workflow import planned_commands
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from mass.encoder import create_clip, create_visual
from mass.io import ArtifactError, load_tensors, read_metadata, save_tensors
from mass_pipeline.editions import load_edition
from mass_pipeline.provenance import OWN_FILE, TRAINED_HERE, compare
from mass_pipeline.steps.import_finetuned import main as import_finetuned

TINY = dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, intermediate_size=384, image_size=32,
            patch_size=8, projection_dim=64, hidden_act="gelu", layer_norm_eps=1e-5)


@pytest.fixture
def theta_pre(tiny_clip, tmp_path):
    path = tmp_path / "pretrained.safetensors"
    save_tensors(path, tiny_clip.state_dict())
    return path


def _import(theta_pre, file, out):
    import_finetuned(["--model", "mass-tiny-vit", "--task", "Cars", "--file", str(file), "--pretrained",
                      str(theta_pre), "--out", str(out)])
    return load_tensors(out)


def test_open_clip_and_task_vector_layouts_are_stored_as_the_image_tower(tiny_clip, theta_pre, tmp_path):
    visual = {k: v + 0.01 for k, v in tiny_clip.visual.state_dict().items()}
    full = tmp_path / "clip.pt"  # a whole open_clip CLIP state dict, torch-saved
    torch.save(OrderedDict({f"visual.{k}": v for k, v in visual.items()} | {"logit_scale": torch.ones(())}), full)
    stored = _import(theta_pre, full, tmp_path / "a.safetensors")
    assert stored.keys() == visual.keys() and all(torch.equal(stored[k], visual[k]) for k in visual)
    meta = read_metadata(tmp_path / "a.safetensors")
    assert (meta["task"], meta["model"], meta["source"]) == ("Cars", "mass-tiny-vit", str(full.resolve()))
    assert len(meta["source_sha256"]) == 64
    encoder = tmp_path / "encoder.pt"  # the final code's ImageEncoder: 'model.visual.' names
    torch.save(OrderedDict((f"model.visual.{k}", v) for k, v in visual.items()), encoder)
    assert torch.equal(_import(theta_pre, encoder, tmp_path / "b.safetensors")["proj"], visual["proj"])


def test_transformers_vision_model_gets_theta_pres_projection(theta_pre, tmp_path):
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)).eval()
    pre = load_tensors(theta_pre)
    with torch.no_grad():
        hf.visual_projection.weight.copy_(pre["visual.proj"].t())  # fine-tuned without touching the projection
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items() if k.startswith("vision_model.")}, file,
              metadata={"format": "pt"})
    stored = _import(theta_pre, file, tmp_path / "c.safetensors")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(create_visual("mass-tiny-vit", stored)(images), hf(pixel_values=images).image_embeds,
                                   rtol=1e-4, atol=1e-6)


def test_an_encoder_of_another_shape_is_refused_naming_the_file(theta_pre, tmp_path):
    torch.manual_seed(0)
    other = create_clip("mass-tiny-vit").visual.state_dict()
    other["conv1.weight"] = torch.zeros(96, 3, 4, 4)  # patch 4, not the backbone's 8
    file = tmp_path / "wrong.pt"
    torch.save(other, file)
    with pytest.raises(ArtifactError, match=rf"{file} is not a mass-tiny-vit image encoder.*wrong shapes \['conv1"):
        _import(theta_pre, file, tmp_path / "d.safetensors")
    assert not (tmp_path / "d.safetensors").exists()


def test_own_files_are_reported_never_stopped():
    first = load_edition("first")
    rows = {c.task: c for c in compare(first, "ViT-B-32", {"Cars": 0.50, "EMNIST": 0.99}, tolerance=1.0,
                                       trained_here=frozenset({"EMNIST"}), own=frozenset({"Cars"}))}
    assert rows["Cars"].verdict == OWN_FILE and "finetuned.files" in rows["Cars"].note
    assert rows["EMNIST"].verdict == TRAINED_HERE


def test_rules_import_the_given_file_instead_of_the_source(tmp_path):
    own = tmp_path / "my cars.pt"
    own.write_bytes(b"checked when imported")
    work = tmp_path / "work"
    work.mkdir()
    overlay = {"finetuned": {"files": {"ViT-B-32": {"Cars": str(own)}}},
               "run": {"backbones": ["ViT-B-32"], "benchmarks": ["8"]}}
    stdout, lines, commands = planned_commands(work, overlay, ["results/ViT-B-32/8/methods/tsvm.json"])
    imported = [line for line in lines if line.startswith("python -m mass_pipeline.steps.import_finetuned ")]
    assert len(imported) == 1 and f"--task Cars --file '{own}'" in imported[0]
    assert "--out resources/checkpoints/ViT-B-32/files/Cars.safetensors" in imported[0]
    fetched = [line for line in lines if line.startswith("python -m mass_pipeline.steps.fetch_finetuned ")]
    assert len(fetched) == 7 and not any("--task Cars " in line for line in fetched)
    provenance = next(line for line in lines if "check_provenance" in line)
    assert "--own Cars" in provenance and "--trained-here --own" in provenance
    built = {line.split("--task ")[1].split()[0] for line in lines
             if line.startswith("python -m mass_pipeline.steps.build_head ") and "/heads/" in line}
    assert "Cars" in built  # its head is built from text: the file was not trained against the published one
