"""The configuration checks itself before any job runs and documents itself (issue 20 items 3, 4, 7;
issue 17's schema bullet): unknown keys stop the run naming the key and the allowed ones; every key
has a description and a default, the paper's value in config.yaml (its one place); architectures, blocks and
ranges are checked against the model before Snakemake deletes anything; docs/config.md is generated
from the schema."""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest
import torch
import yaml
from support.workflow import ROOT, SMALL, snakemake, workflow_copy

from mass.forward import FirstPassResult
from mass.io import ArtifactError
from mass.task_vectors import LayerId, Location

_spec = importlib.util.spec_from_file_location("configcheck", ROOT / "workflow/scripts/configcheck.py")
configcheck = importlib.util.module_from_spec(_spec)
sys.modules["configcheck"] = configcheck
_spec.loader.exec_module(configcheck)

SCHEMA = configcheck.load_schema()
PAPER = yaml.safe_load((ROOT / "config.yaml").read_text())
DEMO = configcheck.merge(PAPER, yaml.safe_load((ROOT / "workflow/presets/demo.yaml").read_text()))


def errors_of(overlay: dict, base: dict = DEMO) -> str:
    with pytest.raises(configcheck.ConfigError) as info:
        configcheck.check_config(configcheck.merge(base, overlay))
    return str(info.value)


@pytest.mark.parametrize("config", [PAPER, DEMO], ids=["paper", "demo"])
def test_shipped_configs_pass(config):
    configcheck.check_config(copy.deepcopy(config))


OVERLAYS = {  # every --configfile stack the project runs: a stale key in an overlay fails here, not mid-run
    "final": ["workflow/presets/final.yaml"],
    "fusionbench": ["workflow/presets/fusionbench.yaml"],
    "ci_demo": ["workflow/presets/demo.yaml", "tests/ci_demo.yaml"],
    "slurm_demo": ["workflow/presets/demo.yaml", "tests/slurm_demo.yaml"],
    "rehearsal": ["tests/workflow/rehearsal/rehearsal.yaml"],
    "rehearsal_four": ["tests/workflow/rehearsal/rehearsal.yaml", "tests/workflow/rehearsal/four_tasks.yaml"],
    "rehearsal_backbones": ["tests/workflow/rehearsal/rehearsal.yaml", "tests/workflow/rehearsal/other_backbones.yaml"],
    "rehearsal_final": ["workflow/presets/final.yaml", "tests/workflow/rehearsal/rehearsal.yaml",
                        "tests/workflow/rehearsal/final_eight.yaml"],
    "rehearsal_final_three": ["workflow/presets/final.yaml", "tests/workflow/rehearsal/rehearsal.yaml",
                              "tests/workflow/rehearsal/final_eight.yaml", "tests/workflow/rehearsal/final_three.yaml"],
}


@pytest.mark.parametrize("stack", OVERLAYS.values(), ids=OVERLAYS)
def test_overlays_the_project_runs_pass(stack):
    config = copy.deepcopy(PAPER)
    for path in stack:
        config = configcheck.merge(config, yaml.safe_load((ROOT / path).read_text()))
    configcheck.check_config(config)


# --- item 3: unknown keys --------------------------------------------------------------------

def test_misspelled_nested_key_names_it_and_the_allowed_ones():
    message = errors_of({"routing": {"tok_k": 5}})
    assert "routing.tok_k: unknown key (did you mean 'top_k'?)" in message
    assert "allowed under 'routing': layer, modules, io, token, temperature" in message


def test_misspelled_top_level_key():
    message = errors_of({"rooters": ["proj"]})
    assert "rooters: unknown key (did you mean 'routers'?); allowed at the top level: seed," in message


@pytest.mark.parametrize("overlay, key", [
    ({"backbones": {"tiny": {"arch": "mass-tiny-vit", "pretrained": "demo", "candidate_blocks": [2, 5],
                             "pretrianed": "x"}}}, "backbones.tiny.pretrianed"),
    ({"demo": {"pretrain": {"step": 3}}}, "demo.pretrain.step"),
    ({"datasets": {"MNIST": {"revison": "abc"}}}, "datasets.MNIST.revison"),
    ({"sources": {"lockfile": "x.json"}}, "sources.lockfile"),
])
def test_unknown_keys_everywhere(overlay, key):
    assert f"{key}: unknown key" in errors_of(overlay)


def _objects(sub, path=()):
    """Every object schema with fixed keys, and every key schema, with its path."""
    sub = configcheck._resolve(SCHEMA, sub)
    if "properties" in sub:
        yield "object", path, sub
        for key, child in sub["properties"].items():
            yield "key", (*path, key), {**configcheck._resolve(SCHEMA, child), "parent": sub}
            yield from _objects(child, (*path, key))
    entry = sub.get("additionalProperties")
    if isinstance(entry, dict):
        yield from _objects(entry, (*path, "<name>"))


def test_every_object_rejects_unknown_keys_and_every_key_is_documented():
    found = list(_objects(SCHEMA))
    assert sum(kind == "key" for kind, _, _ in found) > 60
    for kind, path, sub in found:
        if kind == "object":
            assert sub.get("additionalProperties") is False, path
            continue
        assert sub.get("description"), f"{'.'.join(path)} has no description"
        parent = sub["parent"]  # a key a map entry requires, or one of its alternatives (tasks: folder or csv)
        required = parent.get("required", []) + [k for one in parent.get("oneOf", []) for k in one.get("required", [])]
        if "<name>" in path:  # inside a map entry: a default in the schema, or required
            assert "default" in sub or path[-1] in required, f"{'.'.join(path)} has no default"


def test_config_yaml_is_the_one_place_of_the_defaults():
    """Every key outside a map entry has its default in config.yaml and nowhere else: config.yaml sets it
    and the schema gives no default that could drift from it."""
    for kind, path, sub in _objects(SCHEMA):
        if kind != "key" or "<name>" in path:
            continue
        assert "default" not in sub, f"{'.'.join(path)}: a default in the schema; config.yaml holds it"
        value = PAPER
        for key in path:
            assert isinstance(value, dict) and key in value, f"config.yaml does not set {'.'.join(path)}"
            value = value[key]
    assert set(SCHEMA["properties"]) == set(PAPER)
    assert configcheck.with_defaults(SCHEMA, PAPER)["properties"]["merge"]["properties"]["alpha"]["default"] \
        == PAPER["merge"]["alpha"]


def test_docs_config_md_is_generated_from_the_schema():
    current = (ROOT / "docs/config.md").read_text()
    assert current == configcheck.render_docs(configcheck.with_defaults(SCHEMA, PAPER)), (
        "docs/config.md is out of date: python workflow/scripts/configcheck.py docs > docs/config.md")
    for kind, path, sub in _objects(SCHEMA):
        if kind == "key" and len(path) > 1 and "properties" not in sub:
            assert f"`{'.'.join(path)}`" in current, path


# --- item 4 and 7: values checked against the model -----------------------------------------

@pytest.mark.parametrize("overlay, expected", [
    ({"backbones": {"tiny": {"arch": "mass-tiny-vitt"}}},
     "backbones.tiny.arch: 'mass-tiny-vitt' is not an open_clip architecture (nor one of src/mass/model_configs); "
     "did you mean 'mass-tiny-vit'?"),
    ({"backbones": {"tiny": {"candidate_blocks": [2, 6]}}},
     "backbones.tiny.candidate_blocks: [2, 6] goes past the last block of mass-tiny-vit (blocks 0-5)"),
    ({"backbones": {"tiny": {"candidate_blocks": [5, 2]}}}, "backbones.tiny.candidate_blocks: [5, 2] is not ordered"),
    ({"routing": {"layer": "99.mlp.in"}},
     "routing.layer: '99.mlp.in': block 99 does not exist in backbone tiny (mass-tiny-vit has blocks 0-5); "
     "choose a block in 0-5, or 'auto'"),
    ({"routing": {"eta_range": [0.5, 0.1]}}, "routing.eta_range: [0.5, 0.1] has low > high; write [0.1, 0.5]"),
    ({"routing": {"io": "out"}, "first_pass": {"ios": ["in"]}}, "routing.io: 'out' is not recorded by the first pass"),
    ({"routing": {"layer": "3.mlp.out"}, "first_pass": {"ios": ["in"]}}, "add 'out' to first_pass.ios"),
    ({"routing": {"token": "mean"}, "first_pass": {"tokens": ["cls"]}}, "add it to first_pass.tokens"),
    ({"merge": {"epsilon_grid": [-0.1, 0.3]}}, "merge.epsilon_grid.0: -0.1 is less than the minimum of 0"),
    ({"merge": {"epsilon_grid": [0.3, 1.5]}}, "merge.epsilon_grid.1: 1.5 is greater than the maximum of 1"),
    ({"merge": {"alpha": 0}}, "merge.alpha: 0 is less than or equal to the minimum of 0"),
    ({"baselines": {"iso_c": {"alphas": [1.0, -1.0]}}},
     "baselines.iso_c.alphas.1: -1.0 is less than or equal to the minimum"),
    ({"routing": {"eta": 1.5}}, "routing.eta: 1.5 is neither 'auto' nor a number in [0, 1]"),
    ({"routers": ["nn"]}, "routers: must include 'proj'"),
    ({"sources": {"finetuned_layout": "crisostomi", "finetuned_revision": "a" * 40}},
     "sources.finetuned_revision: '" + "a" * 40 + "' names one commit, but the crisostomi layout has one repository"),
    ({"provenance": {"accept": ["DTDD"]}}, "provenance.accept: ['DTDD'] are not tasks of the selected benchmarks"),
    ({"finetuned": {"files": {"big": {"digits": "x.pt"}}}}, "finetuned.files.big: no backbone of that name"),
    ({"finetuned": {"files": {"tiny": {"letterz": "x.pt"}}}},
     "finetuned.files.tiny.letterz: not a task of the selected benchmarks"),
    ({"finetuned": {"files": {"tiny": {"digits": "/nonexistent/ft.pt"}}}},
     "finetuned.files.tiny.digits: /nonexistent/ft.pt is not a file; give the path of the fine-tuned encoder"),
    ({"edition": "second"}, "edition: 'second' is not one of ['first', 'final', 'fusionbench', 'demo']"),
    ({"backbones": {"tiny": {"routing_layer": "7.mlp.in"}}},
     "backbones.tiny.routing_layer: '7.mlp.in': block 7 does not exist in backbone tiny"),
    ({"moerging": {"smile": {"gate_k": 2, "k": 30, "top_k": 1}}},
     "moerging.smile.k: 30 components, but the SVD cache holds 24 per matrix for backbone tiny (width 96 x "
     "svd.rank_fraction 0.25); lower it to at most 24, or raise svd.rank_fraction to at least 0.3125"),
    ({"textspan": {"early_block": 99}},
     "textspan.early_block: block 99 does not exist in backbone tiny (mass-tiny-vit has blocks 0-5); choose one in "
     "0-5"),
    ({"tsvc": {"size_fraction": 0.9}},
     "tsvc.size_fraction: 0.9 keeps 42 components of the 96 x 96 task matrices of backbone tiny, and the SVD cache "
     "holds 24 (svd.rank_fraction 0.25); lower it to at most 0.502, or raise svd.rank_fraction"),
    ({"moerging": {"smile": {"gate_k": 2, "k": 4, "top_k": 5}}},
     "moerging.smile.top_k: 5 experts per token, but the smallest selected benchmark has 4 tasks"),
])
def test_values_are_checked_naming_the_key(overlay, expected):
    assert expected in errors_of(overlay)


@pytest.mark.parametrize("overlay,expected", [
    ({"tasks": {"MNIST": {"folder": "."}}}, "tasks.MNIST: the catalog has a task called MNIST"),
    ({"tasks": {"Trees": {"folder": "no/such/folder"}}}, "tasks.Trees.folder: no/such/folder is not a folder"),
    ({"tasks": {"Trees": {"csv": {"train": "a.csv", "test": "b.csv"}}}}, "tasks.Trees.csv.train: a.csv is not a file"),
    ({"tasks": {"Trees": {"folder": ".", "csv": {"train": "a.csv", "test": "b.csv"}}}}, "tasks.Trees"),
    ({"tasks": {"Trees": {"folder": ".", "templates": ["a photo."]}}}, "tasks.Trees.templates.0"),
    ({"benchmarks": {"8": ["Cars", "Treess"]}}, "benchmarks.8: Treess is neither a task of the catalog"),
    ({"tasks": {"Birds": {"hub": {"repo": "org/birds", "revision": "main"}}}},
     "tasks.Birds.hub.revision: 'main' is not a commit: give the full 40-hex sha of the commit to download"),
    ({"tasks": {"Birds": {"hub": {"repo": "org/birds"}}}},
     "tasks.Birds.hub: 'revision' is a required property: a hub dataset is declared by its repository"),
    ({"tasks": {"Birds": {"hub": {"repo": "birds", "revision": "0" * 40}}}},
     "tasks.Birds.hub.repo: 'birds' is not a dataset repository; give it as <owner>/<name>"),
    ({"tasks": {"Birds": {"hub": {"repo": "org/birds", "revision": "0" * 40, "splits": {"val": "valid"}}}}},
     "tasks.Birds.hub.splits.val: unknown key; allowed under 'tasks.Birds.hub.splits': train, test"),
    ({"tasks": {"Birds": {"hub": {"repo": "org/birds", "revision": "0" * 40}, "folder": "."}}}, "tasks.Birds"),
])
def test_declared_tasks_are_checked_naming_the_key(overlay, expected):
    """Your own tasks (docs/data.md, "Your own tasks"): in the paper configuration, a name the catalog has, files
    that are not there, two sources or a template without {c}, a benchmark task nobody declared, and a hub dataset
    without a pinned commit, with a malformed repository or an unknown split."""
    assert expected in errors_of(overlay, base=PAPER)


def test_fusionbench_source_needs_emnist_fine_tuned_here():
    """FusionBench's EMNIST encoder is EMNIST letters (tests/fixtures/sources/fusionbench.json): with its layout,
    the catalog's EMNIST (digits) must be fine-tuned here (config.yaml does, as the paper did), and the per-task
    repositories take no one revision."""
    fusion = {"sources": {"finetuned_layout": "fusionbench", "finetuned_repo": "tanganke"},
              "run": {"backbones": ["ViT-B-32"], "benchmarks": ["20"]}, "finetuned": {"refinetune": []}}
    message = errors_of(fusion, base=PAPER)
    assert ("finetuned.refinetune: the fusionbench source has no encoder for ['EMNIST'] (fusionbench's EMNIST is "
            "EMNIST letters, not the paper's digits)") in message
    configcheck.check_config(configcheck.merge(PAPER, {**fusion, "finetuned": {"refinetune": ["EMNIST"]}}))
    configcheck.check_config(configcheck.merge(PAPER, {**fusion, "run": {"backbones": ["ViT-B-32"],
                                                                         "benchmarks": ["8"]}}))
    pinned = errors_of({"sources": {**fusion["sources"], "finetuned_revision": "b" * 40}}, base=PAPER)
    assert "names one commit, but the fusionbench layout has one repository per backbone and task" in pinned


def test_paper_backbones_are_checked_against_open_clip():
    message = errors_of({"backbones": {"ViT-L-14": {"candidate_blocks": [19, 24]}},
                         "routing": {"layer": "13.attn.in"}}, base=PAPER)
    assert ("backbones.ViT-L-14.candidate_blocks: [19, 24] goes past the last block of ViT-L-14-quickgelu "
            "(blocks 0-23)") in message
    assert "block 13 does not exist in backbone ViT-B-32 (ViT-B-32-quickgelu has blocks 0-11)" in message


def test_location_not_recorded_says_why():
    """The late check (a first-pass file made with another config): the block, or the io/token."""
    fp = FirstPassResult(torch.zeros(2, 3), {Location(LayerId(b, m), "cls"): torch.zeros(2, 2) for b in range(12)
                                             for m in ("attn", "mlp")}, torch.zeros(2), torch.zeros(2))
    with pytest.raises(ArtifactError, match=r"block 99 does not exist in this model \(the first pass recorded "
                                            r"blocks 0-11, ios \['in'\], tokens \['cls'\]\); set routing.layer"):
        fp.residuals_at(Location(LayerId(99, "mlp")))
    with pytest.raises(ArtifactError, match=r"add 'out' to first_pass.ios and 'cls' to first_pass.tokens"):
        fp.residuals_at(Location(LayerId(9, "mlp", "out")))


# --- through Snakemake ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return workflow_copy(tmp_path_factory.mktemp("config"))


@pytest.mark.parametrize("overlay, expected", [
    ({"routing": {"tok_k": 5}}, "routing.tok_k: unknown key (did you mean 'top_k'?)"),
    ({"rooters": ["proj"]}, "rooters: unknown key (did you mean 'routers'?)"),
    ({"routing": {"layer": "99.mlp.in"}}, "block 99 does not exist in backbone tiny"),
    ({"tsvc": {"size_fraction": 0.9}}, "tsvc.size_fraction: 0.9 keeps 42 components"),
], ids=["tok_k", "rooters", "layer99", "size_fraction"])
def test_snakemake_stops_before_planning(workdir, tmp_path, overlay, expected):
    extra = tmp_path / "typo.yaml"
    extra.write_text(yaml.safe_dump(overlay))
    run = snakemake("-n", "--cores", "1", "--configfile", "workflow/presets/demo.yaml", str(extra), cwd=workdir,
                    timeout=120)
    assert run.returncode != 0
    assert expected in run.stdout + run.stderr
    assert "Job stats" not in run.stdout + run.stderr  # nothing was planned


@pytest.mark.slow
def test_arch_typo_keeps_the_pretrained_checkpoint(tmp_path):
    """Snakemake deletes a job's outputs before running it; a typo in `arch` (a params change of the
    checkpoint's rule) must stop the run before that, so reverting the typo reruns nothing."""
    cwd = workflow_copy(tmp_path / "wf")
    target = "resources/checkpoints/tiny/pretrained_demo.safetensors"
    first = snakemake(target, "--cores", "1", *SMALL, cwd=cwd, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (cwd / target).read_bytes()
    (cwd / "typo.yaml").write_text(yaml.safe_dump({"backbones": {"tiny": {"arch": "mass-tiny-vt"}}}))
    typo = snakemake(target, "--cores", "1", *SMALL, "typo.yaml", cwd=cwd, timeout=300)
    assert typo.returncode != 0
    assert "backbones.tiny.arch: 'mass-tiny-vt' is not an open_clip architecture" in typo.stderr + typo.stdout
    assert (cwd / target).read_bytes() == before
    again = snakemake(target, "-n", "--cores", "1", *SMALL, cwd=cwd, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
