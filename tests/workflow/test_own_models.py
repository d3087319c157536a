"""docs/own-models.md, run as written (issue 29 item 4): its configuration block, on the demo's tiny backbone,
with image folders written from the demo's generated tasks and encoders made by the demo's fine-tuning, one
of them saved by transformers as a CLIPVisionModel (FusionBench's format), through every rule to Table 2, the
per-layer figure and the radar."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import torch
import yaml
from PIL import Image
from support.tables import assert_tables_summarise
from support.workflow import ROOT, SMALL, snakemake, workflow_copy
from transformers import CLIPVisionConfig, CLIPVisionModel

from mass.io import copy_artifact, load_tensors
from mass_pipeline.data import demo
from mass_pipeline.methods import TABLE2_ROWS

DOC = ROOT / "docs" / "own-models.md"
# The page's tasks, written from these demo tasks; the first two get the small demo's fine-tuned encoders
# (small_demo runs digits and gratings), the third is fine-tuned by the run
DEMO_TASK = {"Leaves": "digits", "Scans": "gratings", "Birds": "counting"}
# mass-tiny-vit as a transformers CLIPVisionConfig
TINY = dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=3, intermediate_size=384, image_size=32,
            patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5)


def page_config() -> dict:
    """The page's configuration block (the one that starts with ``# mine.yaml``)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    return yaml.safe_load(next(b for b in blocks if b.startswith("# mine.yaml")))


def as_transformers(visual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip image tower as a bare transformers CLIPVisionModel's ``vision_model`` (no projection, as
    FusionBench's files): written here from transformers' names, independently of mass.hf_vision."""
    out = {"embeddings.patch_embedding.weight": visual["conv1.weight"],
           "embeddings.class_embedding": visual["class_embedding"],
           "embeddings.position_embedding.weight": visual["positional_embedding"]}
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = visual[f"{ours}.{kind}"]
    blocks = {int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks.")}
    for i in blocks:
        ours, theirs = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip("qkv", visual[f"{ours}attn.in_proj_{kind}"].chunk(3), strict=True):
                out[f"{theirs}self_attn.{name}_proj.{kind}"] = part
            for src, dst in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{theirs}{dst}.{kind}"] = visual[f"{ours}{src}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def write_page_inputs(cwd, small_demo, config: dict, n_train: int, n_test: int) -> None:
    """The page's folders and checkpoints where its block says they are."""
    for name, folder in ((n, t["folder"]) for n, t in config["tasks"].items()):
        phrases = demo.class_phrases(DEMO_TASK[name])
        for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
            images, labels = demo.generate(DEMO_TASK[name], n, seed)
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                path = cwd / folder / split / phrases[label] / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
    files = config["finetuned"]["files"]["ViT-B-32"]
    trained = small_demo / "resources/checkpoints/tiny/trained"
    (cwd / files["Leaves"]).parent.mkdir(parents=True, exist_ok=True)
    (cwd / files["Leaves"]).write_bytes((trained / f"{DEMO_TASK['Leaves']}.safetensors").read_bytes())
    model = CLIPVisionModel(CLIPVisionConfig(**TINY))
    tower = getattr(model, "vision_model", model)  # transformers 5's CLIPVisionModel is the tower itself
    missing, unexpected = tower.load_state_dict(
        as_transformers(load_tensors(trained / f"{DEMO_TASK['Scans']}.safetensors")), strict=False)
    assert not unexpected and set(missing) <= {"embeddings.position_ids"}  # a buffer, transformers' own
    model.save_pretrained(cwd / files["Scans"].removesuffix("/model.safetensors"))
    # theta_pre of those encoders: the small demo's pretrained tiny CLIP
    pretrained = "resources/checkpoints/tiny/pretrained_demo.safetensors"
    copy_artifact(small_demo / pretrained, cwd / pretrained)


def test_the_walk_through_runs_from_image_folders_and_checkpoints_to_table_2(small_demo, tmp_path):
    cwd = workflow_copy(tmp_path)
    config = page_config()
    assert set(config["tasks"]) == set(DEMO_TASK) and set(config["finetuned"]["files"]["ViT-B-32"]) == {
        "Leaves", "Scans"}
    sizes = yaml.safe_load((ROOT / "tests/slurm_demo.yaml").read_text())["demo"]
    write_page_inputs(cwd, small_demo, config, sizes["n_train"], sizes["n_test"])
    # the page on the tiny backbone: its block with ViT-B-32 replaced, the images at the backbone's resolution
    config["run"]["backbones"] = ["tiny"]
    config["finetuned"]["files"] = {"tiny": config["finetuned"]["files"].pop("ViT-B-32")}
    config["sources"] = {"image_size": 32}
    (cwd / "mine.yaml").write_text(yaml.safe_dump(config))
    configs = (*SMALL, "mine.yaml")
    check = subprocess.run([sys.executable, "workflow/scripts/configcheck.py", "check", "config.yaml",
                            *configs[1:]], cwd=cwd, capture_output=True, text=True)
    assert check.returncode == 0 and "configuration OK" in check.stdout, check.stderr

    run = snakemake("--cores", "2", *configs, cwd=cwd, timeout=1500, measured=300)
    assert run.returncode == 0, run.stderr[-4000:]
    ran = set(re.findall(r"\(Rule: (\w+)\)", run.stderr + run.stdout))
    assert {"prepare_own_task", "prepare_own_train_split", "import_finetuned", "finetune", "build_head",
            "evaluate_endpoints", "check_provenance", "svd_cache", "merge", "first_pass", "routing_sweep",
            "select_epsilon", "evaluate_tsvm", "evaluate_baseline", "evaluate_mass", "evaluate_smile",
            "evaluate_wemoe", "collect_results", "make_tables", "make_plots"} <= ran
    assert not {"generate_demo_task", "pretrain_demo_clip"} & ran  # your images, the given theta_pre

    # the transformers file is read as the tower it was made from, with theta_pre's projection
    imported = load_tensors(cwd / "resources/checkpoints/tiny/files/Scans.safetensors")
    made = load_tensors(small_demo / f"resources/checkpoints/tiny/trained/{DEMO_TASK['Scans']}.safetensors")
    pre = load_tensors(cwd / "resources/checkpoints/tiny/pretrained_demo.safetensors")
    assert set(imported) == set(made)
    for name, tensor in imported.items():
        torch.testing.assert_close(tensor, pre["visual.proj"] if name == "proj" else made[name], rtol=0, atol=0)

    # Table 2, the per-layer figure and the radar of the page's benchmark
    table2 = pd.read_csv(cwd / "results/tables/table2.csv", header=[0, 1], index_col=0)
    assert list(table2.columns) == [("tiny", "mine tasks")]
    assert {TABLE2_ROWS[m] for m in ("zeroshot", "finetuned", "tsvm", "smile", "wemoe", "mass_proj")} <= set(
        table2.index)
    per_task = pd.read_csv(cwd / "results/tables/per_task.csv", dtype={"benchmark": str})
    assert set(per_task.task) == set(config["tasks"]) and set(per_task.benchmark) == {"mine"}
    assert per_task.accuracy.between(0, 1).all()
    assert_tables_summarise(cwd / "results/tables/per_task.csv", cwd / "results/tables")
    for figure in ("per_layer_tiny_mine", "radar_mine"):
        for ext in ("pdf", "png"):
            assert (cwd / "figures" / f"{figure}.{ext}").stat().st_size > 1000, figure
    provenance = pd.read_csv(cwd / "results/tables/endpoints_vs_published.csv").set_index("task")
    assert set(provenance.verdict) == {"not published"}
    info = json.loads((cwd / "resources/data/demo/Scans/info.json").read_text())
    assert info["templates"] == config["tasks"]["Scans"]["templates"]
