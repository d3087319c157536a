"""Checkpoint and head fetching from the 127.0.0.1 hub, safe unpickling of published files, theta_pre,
and the download rules' options."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from support.hub import COMMIT, pickled_head
from support.workflow import planned_commands

from mass.encoder import create_clip
from mass.io import ArtifactError, load_tensors, save_tensors
from mass_pipeline.sources.download import ChecksumMismatch, HubRepo, LockFile, file_record
from mass_pipeline.sources.fetch import (
    fetch_finetuned,
    fetch_head,
    fetch_pretrained,
    safe_torch_load,
    state_dict_of,
)

REPO = Path(__file__).resolve().parents[2]


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_forbidden_class_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": Evil(marker)}, path)
    with pytest.raises(ArtifactError, match=r"refusing to load (posix|os|nt)\.system") as err:
        safe_torch_load(path)
    assert str(path) in str(err.value) and not marker.exists()


def test_plain_state_dict_loads(tmp_path):
    state = OrderedDict(weight=torch.randn(3, 4), bias=torch.zeros(3))
    torch.save(state, tmp_path / "sd.pt")
    loaded = state_dict_of(safe_torch_load(tmp_path / "sd.pt"), tmp_path / "sd.pt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_pickled_modules_are_read_without_their_code(tmp_path, monkeypatch):
    linear = torch.nn.Linear(3, 2)
    torch.save(linear, tmp_path / "linear.pt")
    tensors = state_dict_of(safe_torch_load(tmp_path / "linear.pt"), tmp_path / "linear.pt")
    assert torch.equal(tensors["weight"], linear.weight.detach()) and torch.equal(tensors["bias"], linear.bias.detach())
    weight = torch.randn(5, 8)
    pickled_head(monkeypatch, tmp_path / "head.pt", weight)
    assert "src.modeling" not in sys.modules
    assert torch.equal(state_dict_of(safe_torch_load(tmp_path / "head.pt"), tmp_path / "head.pt")["weight"], weight)


def test_fetch_head_and_finetuned_from_the_hub(hub, tmp_path, monkeypatch):  # noqa: F811
    torch.manual_seed(0)
    clip = create_clip("mass-tiny-vit")
    visual = clip.visual.state_dict()
    encoder = OrderedDict((f"model.visual.{k}", v.clone() + 1) for k, v in visual.items())
    encoder["model.token_embedding.weight"] = torch.zeros(4, 4)  # text tower: dropped
    buf = io.BytesIO()
    torch.save(encoder, buf)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/MNISTVal/nonlinear_finetuned.pt", buf.getvalue())
    weight = torch.randn(10, 16)
    pickled_head(monkeypatch, tmp_path / "head.pt", weight)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/head_MNISTVal.pt", (tmp_path / "head.pt").read_bytes())
    lock = LockFile(tmp_path / "lock.json")
    out = tmp_path / "ckpt" / "hub" / "MNIST.safetensors"
    fetch_finetuned("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, lock, endpoint=hub.url, retries=0)
    stored = load_tensors(out)
    assert stored.keys() == visual.keys() and all(torch.equal(stored[k], visual[k] + 1) for k in visual)
    assert not out.with_suffix(".pt").exists()
    head_out = tmp_path / "ckpt" / "hub" / "heads" / "MNIST.safetensors"
    fetch_head("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", head_out, lock, endpoint=hub.url, retries=0)
    assert load_tensors(head_out).keys() == {"weight"} and torch.equal(load_tensors(head_out)["weight"], weight)
    with pytest.raises(ArtifactError, match="not a ViT-B-32 image encoder"):
        fetch_finetuned("ViT-B-32", "MNIST", "nik-dim/tall_masks", tmp_path / "x.safetensors", lock,
                        endpoint=hub.url, hub_model_dir="mass-tiny-vit", retries=0)
    buf = io.BytesIO()
    torch.save(OrderedDict((k, v + 5) for k, v in encoder.items()), buf)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/MNISTVal/nonlinear_finetuned.pt", buf.getvalue(),
            commit="d" * 40)  # a newer commit on main: a rerun keeps the pinned one
    out.unlink()
    fetch_finetuned("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, lock, endpoint=hub.url, retries=0)
    assert all(torch.equal(load_tensors(out)[k], visual[k] + 1) for k in visual)


def test_placed_checkpoint_at_a_pinned_commit_verifies_with_no_network(tmp_path):
    """Issue 31 item 5: with a commit sha as the revision, a checkpoint the user placed on disk (its size
    and sha256 in the lock) was looked up on the hub first, so "data already on disk" needed the network.
    Now it is verified on disk; no server is running here (the endpoint is a closed port)."""
    torch.manual_seed(0)
    visual = create_clip("mass-tiny-vit").visual.state_dict()
    raw = tmp_path / "ckpt" / "MNIST.pt"
    raw.parent.mkdir(parents=True)
    torch.save(OrderedDict((f"model.visual.{k}", v + 1) for k, v in visual.items()), raw)
    commit, name = "c" * 40, "single_task/mass-tiny-vit/MNISTVal/nonlinear_finetuned.pt"
    lock = LockFile(tmp_path / "lock.json")
    lock.record_file(HubRepo("nik-dim/tall_masks").file_key(commit, name), file_record(raw))
    out, dead = tmp_path / "ckpt" / "MNIST.safetensors", "http://127.0.0.1:9"
    fetch_finetuned("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, lock, revision=commit, endpoint=dead,
                    raw=raw, retries=0)
    assert all(torch.equal(load_tensors(out)[k], visual[k] + 1) for k in visual) and raw.exists()  # placed: kept
    raw.write_bytes(raw.read_bytes()[:-10])  # a placed file that is not the pinned one is refused, still offline
    with pytest.raises(ChecksumMismatch, match="is not the file"):
        fetch_finetuned("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, lock, revision=commit, endpoint=dead,
                        raw=raw, retries=0)


def test_checkpoint_folder_spelled_differently_is_found_on_every_fetch(hub, tmp_path, monkeypatch):  # noqa: F811
    """The second fetch of a pinned repository (no listing before the fix) still finds VIT-B-16-style folders."""
    torch.manual_seed(0)
    visual = create_clip("mass-tiny-vit").visual.state_dict()
    for task in ("MNIST", "SVHN"):
        buf = io.BytesIO()
        torch.save(OrderedDict((f"model.visual.{k}", v) for k, v in visual.items()), buf)
        hub.add("nik-dim/tall_masks", f"single_task/MASS-TINY-VIT/{task}Val/nonlinear_finetuned.pt", buf.getvalue())
    lock = LockFile(tmp_path / "lock.json")
    for task in ("MNIST", "SVHN"):
        fetch_finetuned("mass-tiny-vit", task, "nik-dim/tall_masks", tmp_path / f"{task}.safetensors", lock,
                        endpoint=hub.url, retries=0)
    assert hub.api_calls() == 1 and (tmp_path / "SVHN.safetensors").exists()
    listing = lock.revision("nik-dim/tall_masks@main")["files"]
    assert "single_task/MASS-TINY-VIT/SVHNVal/nonlinear_finetuned.pt" in listing
    with pytest.raises(ArtifactError, match="no file single_task/mass-tiny-vit/DTDVal"):
        fetch_finetuned("mass-tiny-vit", "DTD", "nik-dim/tall_masks", tmp_path / "DTD.safetensors", lock,
                        endpoint=hub.url, retries=0)


def test_published_head_is_compared_with_the_head_built_from_text(hub, tmp_path, monkeypatch):  # noqa: F811
    weight = torch.nn.functional.normalize(torch.randn(4, 16), dim=1) * 100
    pickled_head(monkeypatch, tmp_path / "head.pt", weight)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/head_DTDVal.pt", (tmp_path / "head.pt").read_bytes())
    lock = LockFile(tmp_path / "lock.json")
    built = tmp_path / "built.safetensors"
    fetch = {"model": "mass-tiny-vit", "task": "DTD", "repo": "nik-dim/tall_masks", "lock": lock, "endpoint": hub.url,
             "retries": 0, "compare_with": built}
    save_tensors(built, {"weight": weight + 0.01 * torch.randn(4, 16)})
    fetch_head(out=tmp_path / "published.safetensors", report=tmp_path / "same.json", **fetch)
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["classes"] == 4 and same["min_cosine"] > 0.99 and same["same_order"]
    save_tensors(built, {"weight": weight[[1, 0, 2, 3]]})  # two class names swapped
    fetch_head(out=tmp_path / "published.safetensors", report=tmp_path / "swapped.json", **fetch)
    swapped = json.loads((tmp_path / "swapped.json").read_text())
    assert not swapped["same_order"] and swapped["least_similar_class"] in (0, 1)
    save_tensors(built, {"weight": weight[:3]})
    with pytest.raises(ArtifactError, match=r"published head is \(4, 16\), the pipeline's \(3, 16\)"):
        fetch_head(out=tmp_path / "published.safetensors", report=tmp_path / "bad.json", **fetch)


def test_fetch_pretrained_from_file_and_from_hub(hub, tmp_path):  # noqa: F811
    torch.manual_seed(1)
    state = create_clip("mass-tiny-vit").state_dict()
    torch.save(state, tmp_path / "clip.pt")
    out = tmp_path / "pretrained_openai.safetensors"
    fetch_pretrained("mass-tiny-vit", out, from_file=tmp_path / "clip.pt")
    stored = load_tensors(out)
    assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "openai.pt")  # OpenAI's .pt are TorchScript
    with pytest.raises(ArtifactError, match="TorchScript"):
        fetch_pretrained("mass-tiny-vit", tmp_path / "x.safetensors", from_file=tmp_path / "openai.pt")

    from safetensors.torch import save

    hub.add("test/tiny-clip", "open_clip_model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    out2 = tmp_path / "hub" / "pretrained_openai.safetensors"
    fetch_pretrained("mass-tiny-vit", out2, LockFile(tmp_path / "lock.json"), repo="test/tiny-clip",
                     endpoint=hub.url, cache_dir=str(tmp_path / "hf-cache"), retries=0)
    assert all(torch.equal(load_tensors(out2)[k], state[k]) for k in state)
    assert sorted(p.name for p in out2.parent.iterdir() if not p.name.endswith(".sha256")) == [
        "pretrained_openai.safetensors"]


def test_rules_pass_config_pins_and_pick_the_shared_head(tmp_path):
    pins = {"datasets": {"MNIST": {"revision": "1" * 40}, "EMNIST": {"source_orientation": "mnist"}},
            "sources": {"finetuned_revision": "2" * 40, "pretrained_revisions": {"ViT-B-32": "3" * 40}}}
    targets = ["resources/raw/MNIST/manifest.json", "resources/data/hub/EMNIST/info.json",
               "resources/checkpoints/ViT-B-32/hub/MNIST.safetensors",
               "resources/checkpoints/ViT-B-32/pretrained_openai.safetensors",
               "results/ViT-B-32/14/methods/tsvm.json", "results/ViT-B-32/20/methods/tsvm.json"]
    stdout, lines, commands = planned_commands(tmp_path, pins, targets)
    mnist = (f"download_dataset --task MNIST --out resources/raw/MNIST --lock workflow/sources.lock.json "
             f"--revision {'1' * 40}")
    assert any(mnist in line for line in lines)
    assert f"--revision {'2' * 40}" in commands["fetch_finetuned"]
    assert f"--revision {'3' * 40}" in commands["fetch_pretrained"]
    # theta_pre: the zero-shot encoder of the fine-tuned checkpoints' repository, at the same revision
    assert (f"--zeroshot-repo nik-dim/tall_masks --zeroshot-layout tall_masks --zeroshot-revision {'2' * 40}"
            in commands["fetch_pretrained"])
    assert "--layout tall_masks" in commands["fetch_finetuned"] and "--pretrained" not in commands["fetch_finetuned"]
    assert "--report results/ViT-B-32/theta_pre.json" in commands["fetch_pretrained"]
    # hub tasks use the published head; check_head compares it with the text-built one
    assert "--compare-with resources/checkpoints/ViT-B-32/built_heads/" in commands["check_head"]
    assert "rule use_published_head:" in stdout
    built = {m for line in lines if line.startswith("python -m mass_pipeline.steps.build_head ")
             for m in re.findall(r"--out resources/checkpoints/ViT-B-32/(\w+/\w+)\.safetensors", line)}
    assert "heads/CIFAR10_STL10" in built and "heads/EMNIST" in built and "heads/Cars" not in built
    assert any("--emnist-orientation mnist --source-orientation mnist" in line for line in lines)
    tsvm = [line for line in lines if line.startswith("python -m mass_pipeline.steps.evaluate_tsvm")]
    heads = {line.count("/14/") > 0: re.findall(r"heads/(\w+)\.safetensors", line) for line in tsvm}
    assert heads[True][8] == "STL10" and len(heads[True]) == 14
    assert heads[False][8] == heads[False][14] == "CIFAR10_STL10" and len(heads[False]) == 20


def test_crisostomi_layout_fetches_per_task_repositories_and_builds_every_head_from_text(tmp_path):
    overlay = {"sources": {"finetuned_repo": "crisostomi", "finetuned_layout": "crisostomi"},
               "run": {"backbones": ["ViT-B-32"], "benchmarks": ["8"]}}
    stdout, lines, commands = planned_commands(tmp_path, overlay, ["results/ViT-B-32/8/methods/tsvm.json"])
    assert "--repo crisostomi" in commands["fetch_finetuned"] and "--layout crisostomi" in commands["fetch_finetuned"]
    assert "--zeroshot-repo crisostomi --zeroshot-layout crisostomi" in commands["fetch_pretrained"]
    assert "check_head" not in commands and "rule use_published_head:" not in stdout
    built = {m for line in lines if line.startswith("python -m mass_pipeline.steps.build_head ")
             for m in re.findall(r"--out resources/checkpoints/ViT-B-32/heads/(\w+)\.safetensors", line)}
    assert built == {"Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SVHN", "SUN397"}


def test_fusionbench_layout_completes_its_encoders_with_theta_pres_projection(tmp_path):
    """FusionBench's encoders lack the projection: fetch_finetuned reads theta_pre (the backbone's OpenAI
    weights; its base is not fetched), heads are built from text, and EMNIST is fine-tuned here."""
    overlay = {"sources": {"finetuned_repo": "tanganke", "finetuned_layout": "fusionbench"}, "edition": "fusionbench",
               "run": {"backbones": ["ViT-B-32"], "benchmarks": ["20"]}}
    stdout, lines, commands = planned_commands(tmp_path, overlay, ["results/ViT-B-32/20/methods/tsvm.json"])
    fetches = [line for line in lines if line.startswith("python -m mass_pipeline.steps.fetch_finetuned ")]
    assert len(fetches) == 19 and not any("--task EMNIST" in line for line in fetches)
    assert all("--layout fusionbench --pretrained resources/checkpoints/ViT-B-32/pretrained_openai.safetensors"
               in line for line in fetches)
    assert "--zeroshot-repo" not in commands["fetch_pretrained"]
    assert "check_head" not in commands and "rule use_published_head:" not in stdout
    assert any(line.startswith("python -m mass_pipeline.steps.finetune ") and "--task EMNIST" in line for line in lines)
    assert "--edition fusionbench" in next(line for line in lines if "check_provenance" in line)


def test_fusionbench_preset_fetches_all_20_of_its_encoders_emnist_letters_included(tmp_path):
    """workflow/presets/fusionbench.yaml with one flag: FusionBench's 20 tasks in its order, EMNISTLetters where
    the paper has EMNIST, every encoder from tanganke/clip-vit-<model>_<task> (tests/fixtures/sources/
    fusionbench.json), none fine-tuned here, held to FusionBench's published accuracies."""
    import yaml
    from support.hub_files import facts

    preset = yaml.safe_load((REPO / "workflow" / "presets" / "fusionbench.yaml").read_text())
    assert preset["benchmarks"]["20"] == facts("fusionbench")["twenty_tasks"]
    stdout, lines, commands = planned_commands(tmp_path, preset, ["results/ViT-B-32/20/methods/mass_proj.json"])
    fetch = re.compile(r"fetch_finetuned --model ViT-B-32 --task (\w+) --repo tanganke .*--layout fusionbench")
    fetched = [m for line in lines for m in fetch.findall(line)]
    assert sorted(fetched) == sorted(preset["benchmarks"]["20"]) and "EMNIST" not in fetched
    assert "rule finetune:" not in stdout and "check_head" not in commands
    assert any("download_dataset --task EMNISTLetters" in line for line in lines)
    mass = next(line for line in lines if line.startswith("python -m mass_pipeline.steps.evaluate_mass "))
    assert "--tasks SUN397 Cars RESISC45 EuroSAT SVHN GTSRB MNIST DTD Flowers102" in mass
    assert "FashionMNIST EMNISTLetters KMNIST RenderedSST2" in mass
    assert "--edition fusionbench" in next(line for line in lines if "check_provenance" in line)


def test_final_edition_preset_plans_its_sources_heads_order_and_routing(tmp_path):
    """workflow/presets/final.yaml with one flag: crisostomi encoders for all 20 tasks (EMNIST too), every head
    built from text (CIFAR10 and STL10 each their own), prepared as the final edition's classes, FusionBench's
    order, routing fixed at block 10 with eta 0.2."""
    import yaml

    final = yaml.safe_load((REPO / "workflow" / "presets" / "final.yaml").read_text())
    stdout, lines, commands = planned_commands(tmp_path, final, ["results/ViT-B-32/20/methods/mass_proj.json"])
    fetch = re.compile(r"fetch_finetuned --model ViT-B-32 --task (\w+) --repo crisostomi")
    fetched = {m for line in lines for m in fetch.findall(line)}
    assert len(fetched) == 20 and "EMNIST" in fetched and "rule finetune:" not in stdout
    built = {m for line in lines if line.startswith("python -m mass_pipeline.steps.build_head ")
             for m in re.findall(r"--out resources/checkpoints/ViT-B-32/heads/(\w+)\.safetensors", line)}
    assert len(built) == 20 and {"CIFAR10", "STL10"} <= built and "CIFAR10_STL10" not in built
    prepared = [line for line in lines if line.startswith("python -m mass_pipeline.steps.prepare_dataset ")]
    assert len(prepared) == 20 and all("--edition final" in line for line in prepared)
    assert any("--task EMNIST" in line and "--source-orientation torchvision" in line for line in prepared)
    mass = next(line for line in lines if line.startswith("python -m mass_pipeline.steps.evaluate_mass "))
    assert "--tasks SUN397 Cars RESISC45 EuroSAT SVHN GTSRB MNIST DTD Flowers102" in mass
    assert "--layer 10.mlp.in" in mass and "--eta 0.2 " in mass
    assert "--edition final" in next(line for line in lines if "check_provenance" in line)


def test_download_rules_are_local_rules():
    """Compute nodes may have no internet: every rule that downloads runs where Snakemake runs."""
    rules = re.split(r"^rule ", (REPO / "workflow" / "rules" / "sources.smk").read_text(), flags=re.M)[1:]
    local = {block.split(":", 1)[0]: "localrule: True" in block for block in rules}
    assert local == {"download_dataset": True, "prepare_dataset": True, "prepare_train_split": True,
                     "fetch_pretrained": True, "fetch_finetuned": True, "check_head": True,
                     "download_own_task": True, "prepare_own_task": True, "prepare_own_train_split": True}


def torch113_head(monkeypatch, path: Path, weight: torch.Tensor, zip_layout: bool) -> None:
    """A head pickled as the task-vector code saved it under torch 1.13: a whole
    ``src.models.modeling.ClassificationHead`` module, in the zip layout or the legacy one."""
    pickled_head(monkeypatch, path, weight, "src.models.modeling", zip_layout)


@pytest.mark.parametrize("zip_layout", [True, False])
def test_published_head_pickled_by_torch_113_is_read_as_tensors_only(hub, tmp_path, monkeypatch,  # noqa: F811
                                                                       zip_layout):
    weight = torch.nn.functional.normalize(torch.randn(10, 16), dim=1) * 100
    torch113_head(monkeypatch, tmp_path / "head.pt", weight, zip_layout)
    assert "src.models.modeling" not in sys.modules
    raw = (tmp_path / "head.pt").read_bytes()
    assert (raw[:2] == b"PK") == zip_layout  # zip archive, or the legacy magic-number layout
    hub.add("nik-dim/tall_masks", "single_task/MASS-TINY-VIT/head_MNISTVal.pt", raw)
    out = tmp_path / "published" / "MNIST.safetensors"
    fetch_head("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, LockFile(tmp_path / "lock.json"),
               endpoint=hub.url, retries=0)
    stored = load_tensors(out)
    assert stored.keys() == {"weight"} and torch.equal(stored["weight"], weight)
    assert "src.models.modeling" not in sys.modules and not out.with_suffix(".pt").exists()


def test_theta_pre_is_the_authors_zero_shot_encoder_and_the_difference_is_recorded(hub, tmp_path):  # noqa: F811
    from safetensors.torch import save

    torch.manual_seed(2)
    state = create_clip("mass-tiny-vit").state_dict()
    hub.add("test/tiny-clip", "open_clip_model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    zeroshot = OrderedDict((f"model.{k}", v.clone()) for k, v in state.items() if k.startswith("visual."))
    zeroshot["model.visual.proj"] += 0.25
    zeroshot["model.token_embedding.weight"] = torch.zeros(3, 3)  # text tower of the authors' file: not used
    buf = io.BytesIO()
    torch.save(zeroshot, buf)
    hub.add("nik-dim/tall_masks", "single_task/MASS-TINY-VIT/MNISTVal/nonlinear_zeroshot.pt", buf.getvalue())
    out, report = tmp_path / "pretrained_openai.safetensors", tmp_path / "theta_pre.json"
    fetch_pretrained("mass-tiny-vit", out, LockFile(tmp_path / "lock.json"), repo="test/tiny-clip", endpoint=hub.url,
                     cache_dir=str(tmp_path / "hf-cache"), zeroshot_repo="nik-dim/tall_masks", report=report,
                     retries=0)
    stored = load_tensors(out)
    assert torch.equal(stored["visual.proj"], state["visual.proj"] + 0.25)
    assert all(torch.equal(stored[k], v) for k, v in state.items() if k != "visual.proj")  # text tower: OpenAI's
    result = json.loads(report.read_text())
    assert result["max_abs_difference"] == pytest.approx(0.25) and result["largest_difference_tensor"] == "visual.proj"
    zeroshot_file = "single_task/MASS-TINY-VIT/MNISTVal/nonlinear_zeroshot.pt"
    assert result["theta_pre"] == f"nik-dim/tall_masks/{zeroshot_file}@{COMMIT}"
    assert result["compared_with"].startswith("test/tiny-clip/open_clip_model.safetensors@")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == []  # downloaded .pt removed


def test_final_edition_layout_one_repository_per_task_and_its_base(hub, tmp_path):  # noqa: F811
    """crisostomi/<model>-<Task>/pytorch_model.bin (an ImageEncoder state dict, keys 'model.', text tensors kept
    but the text transformer) and crisostomi/<model>-base as theta_pre (tests/fixtures/sources/crisostomi.json)."""
    from safetensors.torch import save
    from support.hub_files import facts

    fact = facts("crisostomi")
    torch.manual_seed(3)
    state = create_clip("mass-tiny-vit").state_dict()
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}

    def image_encoder(shift: float) -> bytes:
        sd = OrderedDict((f"model.visual.{k}", v + shift) for k, v in visual.items())
        for key in fact["encoder_keys"]["text_keys_kept"]:
            sd[key] = torch.zeros(2, 2)
        buf = io.BytesIO()
        torch.save(sd, buf)
        return buf.getvalue()

    owner, file = fact["owner"], fact["file"]
    for task, shift in (("MNIST", 1.0), ("RenderedSST2", 2.0)):
        hub.add(fact["finetuned_repo"].format(model="mass-tiny-vit", task=task), file,
                image_encoder(shift))
    hub.add(fact["base_repo"].format(model="mass-tiny-vit"), file, image_encoder(0.5))
    hub.add("test/tiny-clip", "open_clip_model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    lock = LockFile(tmp_path / "lock.json")
    for task, shift in (("MNIST", 1.0), ("RenderedSST2", 2.0)):
        out = tmp_path / f"{task}.safetensors"
        fetch_finetuned("mass-tiny-vit", task, owner, out, lock, endpoint=hub.url, layout="crisostomi", retries=0)
        stored = load_tensors(out)
        assert stored.keys() == visual.keys() and all(torch.equal(stored[k], visual[k] + shift) for k in visual)
    out, report = tmp_path / "pretrained.safetensors", tmp_path / "theta_pre.json"
    fetch_pretrained("mass-tiny-vit", out, lock, repo="test/tiny-clip", endpoint=hub.url,
                     cache_dir=str(tmp_path / "hf-cache"), zeroshot_repo=owner, zeroshot_layout="crisostomi",
                     report=report, retries=0)
    assert torch.equal(load_tensors(out)["visual.proj"], state["visual.proj"] + 0.5)
    result = json.loads(report.read_text())
    assert result["theta_pre"] == f"crisostomi/mass-tiny-vit-base/pytorch_model.bin@{COMMIT}"
    assert result["max_abs_difference"] == pytest.approx(0.5)
    pins = json.loads((tmp_path / "lock.json").read_text())["revisions"]
    assert {"crisostomi/mass-tiny-vit-MNIST@main", "crisostomi/mass-tiny-vit-RenderedSST2@main",
            "crisostomi/mass-tiny-vit-base@main"} <= set(pins)
    with pytest.raises(ArtifactError, match="crisostomi/mass-tiny-vit-DTD"):
        fetch_finetuned("mass-tiny-vit", "DTD", owner, tmp_path / "DTD.safetensors", lock, endpoint=hub.url,
                        layout="crisostomi", retries=0)
