"""No selection step reads a test-split number.

Two kinds of proof: the planned DAG (epsilon is chosen from validation sweeps of validation first
passes only), and behaviour: the evaluation steps, which read validation and test in one job,
choose exactly the same hyperparameters (and record the same validation scores) when the test
split is replaced by data built so that any use of it would show (impossible labels, perfect-routing
residuals, zero features). The eta search is also checked to reuse the cached first pass: the
number of second passes does not grow with the number of trials.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mass.data.store import load_split, save_split
from mass.encoder import create_clip, create_visual
from mass.forward import encode
from mass.io import ArtifactError, load_arrays, load_tensors, read_json, save_arrays, save_tensors
from mass.mass_model import MassModel
from mass.routing import MLPRouter, NearestNeighbourRouter
from mass.svd import TaskComponents
from mass.task_vectors import TaskVector
from mass.tsv import apply_delta, tsv_merge
from mass_pipeline.results import MethodResult
from mass_pipeline.steps import evaluate_baseline, evaluate_batched, evaluate_mass, evaluate_tsvm, routing_features
from mass_pipeline.steps import first_pass as run_first_pass

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["a", "b", "c"]
CLASSES, PER_TASK = 4, 24


# --- the planned DAG ------------------------------------------------------------------------------


def planned_jobs(workdir: Path) -> list[dict]:
    """Every job of the demo DAG as planned by a dry run in a fresh copy of the workflow (so that no
    existing result hides a job): rule, inputs, outputs, wildcards, command."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, workdir / name)
    for name in ("workflow", "envs"):
        shutil.copytree(ROOT / name, workdir / name)
    (workdir / "src").symlink_to(ROOT / "src")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--configfile",
                          "workflow/presets/demo.yaml"], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = []
    for block in re.split(r"^(?:local)?rule ", run.stdout + run.stderr, flags=re.M)[1:]:
        fields = dict(re.findall(r"^\s+(input|output|wildcards): (.*)$", block, re.M))
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({"rule": block.split(":", 1)[0], "input": [p for p in fields.get("input", "").split(", ") if p],
                     "output": [p for p in fields.get("output", "").split(", ") if p],
                     "wildcards": dict(w.split("=", 1) for w in fields.get("wildcards", "").split(", ") if w),
                     "command": command.group(1) if command else ""})
    return jobs


def upstream(jobs: list[dict], start: dict) -> list[dict]:
    producer = {out: job for job in jobs for out in job["output"]}
    seen, todo = [], [start]
    while todo:
        job = todo.pop()
        for path in job["input"]:
            if path in producer and producer[path] not in seen:
                seen.append(producer[path])
                todo.append(producer[path])
    return seen


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> list[dict]:
    return planned_jobs(tmp_path_factory.mktemp("dag"))


def test_epsilon_is_chosen_from_validation_first_passes_only(jobs):
    selections = [j for j in jobs if j["rule"] == "select_epsilon"]
    assert selections
    for job in selections:
        sweeps = [p for p in job["input"] if "/sweep/" in p]
        assert sweeps and all(p.endswith("_val.csv") for p in sweeps), job["input"]
        for up in upstream(jobs, job):
            if up["rule"] in ("first_pass", "routing_sweep"):
                assert up["wildcards"]["split"] == "val", up["output"]
            if up["rule"] == "first_pass":
                assert "--split val " in up["command"], up["command"]


def test_mass_tunes_on_the_validation_first_pass(jobs):
    evaluations = [j for j in jobs if j["rule"] == "evaluate_mass"]
    assert evaluations
    producer = {out: job for job in jobs for out in job["output"]}
    for job in evaluations:
        val = re.search(r"--val-first-pass (\S+)", job["command"]).group(1)
        assert val.endswith("_val.npz") and "--split val " in producer[val]["command"], job["command"]


def test_learned_routers_share_one_z_l_job_fed_by_validation(jobs):
    producer = {out: job for job in jobs for out in job["output"]}
    learned = [j for j in jobs if j["rule"] == "evaluate_mass" and j["wildcards"]["router"] in ("nn", "mlp")]
    assert learned
    by_bench: dict = {}
    for job in learned:
        features = re.search(r"--routing-features (\S+)", job["command"]).group(1)
        by_bench.setdefault((job["wildcards"]["backbone"], job["wildcards"]["bench"]), set()).add(features)
        z_job = producer[features]
        assert z_job["rule"] == "routing_features"
        val = re.search(r"--val-first-pass (\S+)", z_job["command"]).group(1)
        assert "--split val " in producer[val]["command"], z_job["command"]
    # nn and mlp read the same file: z_l is computed once per benchmark
    assert all(len(files) == 1 for files in by_bench.values()), by_bench
    assert len([j for j in jobs if j["rule"] == "routing_features"]) == len(by_bench)


# --- behaviour: a poisoned test split changes no choice -------------------------------------------


def run_cli(module, args: list[str], monkeypatch) -> None:
    """A rule's entry point in this process; the thread count it sets is undone afterwards."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *map(str, args)])
    threads = torch.get_num_threads()
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A 3-task benchmark on the tiny CLIP (random fine-tuning deltas and heads): a clean data root and
    one with the same validation split whose test split is poisoned (noise images, label -1 that no head
    can predict)."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    clip = create_clip("mass-tiny-vit")
    save_tensors(root / "pre.safetensors", dict(clip.state_dict()))
    pre = dict(clip.visual.state_dict())
    rng = np.random.default_rng(0)
    files: dict = {"finetuned": [], "components": [], "heads": []}
    comps = []
    for t, task in enumerate(TASKS):
        ft = {k: v + 0.02 * torch.randn(v.shape) for k, v in pre.items()}
        save_tensors(root / f"ft_{task}.safetensors", ft)
        comp = TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 1 / len(TASKS))
        comp.save(root / f"comp_{task}.safetensors")
        comps.append(comp)
        head = torch.nn.functional.normalize(torch.randn(CLASSES, 64), dim=-1) * 100
        save_tensors(root / f"head_{task}.safetensors", {"weight": head}, {"task": task, "head": task})
        for split in ("val", "test"):
            tint = np.array([80 * t, 255 - 80 * t, 128], dtype=np.int64)
            images = np.clip(rng.integers(0, 120, (PER_TASK, 32, 32, 3)) + tint, 0, 255).astype(np.uint8)
            save_split(root / "clean", task, split, images, rng.integers(0, CLASSES, PER_TASK))
        x, y = load_split(root / "clean", task, "val", mmap=False)
        save_split(root / "poisoned", task, "val", x, y)
        noise = rng.integers(0, 256, (PER_TASK, 32, 32, 3)).astype(np.uint8)
        save_split(root / "poisoned", task, "test", noise, np.full(PER_TASK, -1))
        for key, name in (("finetuned", "ft"), ("components", "comp"), ("heads", "head")):
            files[key].append(root / f"{name}_{task}.safetensors")
    save_tensors(root / "merged.safetensors", tsv_merge(comps)[0])
    return {"root": root, **files}


def common(bench, data: str) -> list:
    return ["--model", "mass-tiny-vit", "--tasks", *TASKS, "--data-dirs", bench["root"] / data,
            "--heads", *bench["heads"], "--pretrained", bench["root"] / "pre.safetensors", "--batch-size", 64,
            "--threads", 1, "--seed", 0]


# The options the rules always pass (the steps require them), at the config's defaults; a test's own
# values come later on the command line and win.
LOCATION = ["--modules", "attn", "mlp", "--io", "in", "--token", "cls"]
ROUTING = [*LOCATION, "--temperature", 1.0, "--top-k", 3, "--eta", "auto", "--eta-range", 0.05, 0.5,
           "--eta-trials", 30, "--mlp-hidden", 1024, "--mlp-epochs", 20]


@pytest.fixture(scope="module")
def first_passes(bench):
    """Validation and clean test first passes through the real step, and a poisoned test first pass whose
    residuals route every sample to its own task and whose features are all zero."""
    mp = pytest.MonkeyPatch()
    root, out = bench["root"], {}
    for split in ("val", "test"):
        out[split] = root / f"fp_{split}.npz"
        run_cli(run_first_pass, [*common(bench, "clean"), "--components", *bench["components"], "--merged",
                                 root / "merged.safetensors", "--split", split, "--alpha", 1.0, "--ios", "in",
                                 "--tokens", "cls", "--out", out[split]], mp)
    mp.undo()
    arrays = load_arrays(out["test"])
    task = arrays["task"]
    for key in [k for k in arrays if k.startswith("res:")]:
        arrays[key] = (np.arange(len(TASKS))[None, :] != task[:, None]).astype(np.float32)
    arrays["features"] = np.zeros_like(arrays["features"])
    out["poisoned"] = root / "fp_poisoned.npz"
    save_arrays(out["poisoned"], **arrays)
    return out


@pytest.mark.parametrize("method,grid", [
    ("task_arithmetic", ["--alphas", 0.3, 0.7, 1.0]),
    ("consensus", ["--alphas", 0.5, 1.0, "--lambdas", 0.2, 0.5, "--min-agreement", 2]),
    ("iso_cts", ["--alphas", 0.5, 1.5, "--common-fraction", 0.8]),
])
def test_baseline_coefficients_ignore_the_test_split(bench, tmp_path, monkeypatch, method, grid):
    results = {}
    for data in ("clean", "poisoned"):
        out = tmp_path / f"{data}.json"
        run_cli(evaluate_baseline, [*common(bench, data), "--method", method, *grid,
                                    "--finetuned", *bench["finetuned"], "--out", out], monkeypatch)
        results[data] = read_json(out)
    # the poison shows wherever the test split is read: every accuracy on it is 0
    assert any(v > 0 for v in results["clean"]["test"].values())
    assert all(v == 0 for v in results["poisoned"]["test"].values())
    assert results["clean"]["hyperparameters"] == results["poisoned"]["hyperparameters"]
    assert results["clean"]["hyperparameters"]["selected_on"] == "val"


def test_mass_layer_and_eta_ignore_the_test_split(bench, first_passes, tmp_path, monkeypatch):
    second_passes = []
    predict = MassModel.predict

    def counted(self, *args, **kwargs):
        second_passes.append(1)
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(MassModel, "predict", counted)
    results = {}
    for data, test_fp in (("clean", first_passes["test"]), ("poisoned", first_passes["poisoned"])):
        out = tmp_path / f"{data}.json"
        run_cli(evaluate_mass, [*common(bench, data), *ROUTING, "--router", "proj",
                                "--components", *bench["components"],
                                "--val-first-pass", first_passes["val"], "--test-first-pass", test_fp,
                                "--layer", "auto", "--blocks", 1, 4, "--eta", "auto", "--eta-trials", 12,
                                "--top-k", 2, "--alpha", 1.0, "--attention", "in_proj", "--out", out], monkeypatch)
        results[data] = read_json(out)
    # eta trials reuse the cached residuals: one validation second pass per m <= top-k, then the test one
    assert len(second_passes) == 2 * (2 + 1)
    clean, poisoned = results["clean"], results["poisoned"]
    # detection power: on the poisoned test split routing is perfect and MASS accuracy is 0, neither on val
    assert all(v == 1.0 for v in poisoned["routing_accuracy"].values())
    assert all(v == 0 for v in poisoned["test"].values())
    assert clean["hyperparameters"]["val_routing_accuracy_at_layer"] < 1.0
    assert clean["hyperparameters"]["val_accuracy"] > 0
    assert clean["hyperparameters"] == poisoned["hyperparameters"]
    assert clean["hyperparameters"]["eta_selected_on"] == "val"


@pytest.mark.parametrize("router,cls", [("nn", NearestNeighbourRouter), ("mlp", MLPRouter)])
def test_learned_routers_train_on_validation_z_l_only(bench, first_passes, tmp_path, monkeypatch, router, cls):
    seen = []
    fit = cls.fit

    def spy(self, features, task_labels, *args, **kwargs):
        seen.append((features.clone(), task_labels.clone()))
        return fit(self, features, task_labels, *args, **kwargs)

    monkeypatch.setattr(cls, "fit", spy)
    features = tmp_path / "z.npz"
    location = ["--val-first-pass", first_passes["val"], "--layer", "2.mlp.in", "--blocks", 1, 4, *LOCATION]
    run_cli(routing_features, [*common(bench, "poisoned"), "--merged", bench["root"] / "merged.safetensors",
                               *location, "--alpha", 1.0, "--out", features], monkeypatch)
    args = [*common(bench, "poisoned"), *ROUTING, "--router", router, "--components", *bench["components"], *location,
            "--test-first-pass", first_passes["poisoned"], "--mlp-hidden", 16, "--mlp-epochs", 2,
            "--alpha", 1.0, "--attention", "in_proj", "--out", tmp_path / "r.json"]
    with pytest.raises(SystemExit, match="--routing-features"):
        run_cli(evaluate_mass, args, monkeypatch)
    with pytest.raises(ArtifactError, match=r"z\.npz holds z_l at 2\.mlp\.in\.cls, not at 1\.attn\.in\.cls"):
        run_cli(evaluate_mass, [*args, "--routing-features", features, "--layer", "1.attn.in"], monkeypatch)
    assert not seen
    run_cli(evaluate_mass, [*args, "--routing-features", features], monkeypatch)
    # z_l, independently: the CLS input of block 2's MLP in the TSV-M model, over the validation images
    clip = create_clip("mass-tiny-vit")
    clip.load_state_dict(load_tensors(bench["root"] / "pre.safetensors"))
    visual = create_visual("mass-tiny-vit", apply_delta(dict(clip.visual.state_dict()),
                                                         load_tensors(bench["root"] / "merged.safetensors")))
    captured = []
    visual.transformer.resblocks[2].ln_2.register_forward_hook(lambda m, a, out: captured.append(out[:, 0]))
    encode(visual, np.concatenate([load_split(bench["root"] / "clean", t, "val", mmap=False)[0] for t in TASKS]),
           32, batch_size=64)
    val = load_arrays(first_passes["val"])
    assert len(seen) == 1
    torch.testing.assert_close(seen[0][0], torch.cat(captured))
    assert torch.equal(seen[0][1], torch.from_numpy(val["task"]))
    assert read_json(tmp_path / "r.json")["hyperparameters"]["layer"] == "2.mlp.in"


def test_batched_mass_and_tsvm_use_and_record_the_configured_alpha(bench, first_passes, tmp_path, monkeypatch):
    """merge.alpha reaches the batched second pass (built by the same helper as per-sample MASS) and
    is what both the batched and the TSV-M results record."""
    built = []
    init = MassModel.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self.alpha)

    monkeypatch.setattr(MassModel, "__init__", spy)
    MethodResult(method="mass_proj", test={}, hyperparameters={"layer": "2.mlp.in", "token": "cls"}).save(
        tmp_path / "mass.json")
    run_cli(evaluate_batched, [*common(bench, "clean"), "--components", *bench["components"], "--alpha", 0.5,
                               "--attention", "in_proj",
                               "--test-first-pass", first_passes["test"], "--mass-result", tmp_path / "mass.json",
                               "--route-batch-size", 8, "--out", tmp_path / "batched.json"], monkeypatch)
    assert built == [0.5]
    assert read_json(tmp_path / "batched.json")["hyperparameters"]["alpha"] == 0.5
    run_cli(evaluate_tsvm, ["--model", "mass-tiny-vit", "--tasks", *TASKS, "--heads", *bench["heads"], "--first-pass",
                            first_passes["test"], "--alpha", 0.7, "--out", tmp_path / "tsvm.json"], monkeypatch)
    assert read_json(tmp_path / "tsvm.json")["hyperparameters"]["alpha"] == 0.7
