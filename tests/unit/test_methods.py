"""The registry of baselines and routers (mass_pipeline.methods) is the one list the config, the rules, the
steps and the tables follow: a method added or renamed in one place and not another fails here."""

from pathlib import Path

import pytest
import torch
import yaml

from mass import baselines
from mass_pipeline.methods import BASELINES, ROUTERS, TABLE2_ROWS, TABLE3_ROWS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["properties"]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def test_every_baseline_has_a_config_block_with_exactly_its_options():
    blocks = {k: v for k, v in SCHEMA["baselines"]["properties"].items() if k != "methods"}
    assert set(blocks) == set(BASELINES)
    assert SCHEMA["baselines"]["properties"]["methods"]["items"]["enum"] == list(BASELINES)
    for name, method in BASELINES.items():
        expected = ({"alphas"} if method.alpha_grid else set()) | ({"lambdas"} if method.per_task_lambdas else set())
        assert set(blocks[name]["properties"]) == expected | set(method.options), name
        assert set(CONFIG["baselines"][name]) == set(blocks[name]["properties"]), name


def test_every_router_is_in_the_schema_and_table3():
    assert SCHEMA["routers"]["items"]["enum"] == sorted(ROUTERS, key=["proj", "proj_pre", "nn", "mlp"].index)
    assert [k for k in TABLE3_ROWS if k != "tsvc"] == [f"mass_{r}" for r in ROUTERS]
    assert {r.first_pass for r in ROUTERS.values()} == {"selected", "pretrained"}


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_builds_and_has_a_table2_row(name, task_vectors):
    _, tvs = task_vectors
    method = BASELINES[name]
    build = method.builder()
    assert build.__module__ == baselines.__name__
    options = {"min_agreement": 2, "common_fraction": 0.8}
    kwargs = {o: options[o] for o in method.options}
    if method.per_task_lambdas:
        delta = build(tvs, [0.4] * len(tvs), 0.5, **kwargs)
    elif method.alpha_grid:
        delta = build(tvs, 0.5, **kwargs)
    else:
        delta = build(tvs, **kwargs)
    assert set(delta) <= set(tvs[0].vector) and delta
    assert TABLE2_ROWS[name] == method.label


@pytest.mark.parametrize("name", [n for n, m in BASELINES.items() if m.alpha_grid])
def test_every_alpha_is_a_scaling_of_one_update_bit_for_bit(name, task_vectors):
    """evaluate_baseline computes each baseline's update once (alpha = 1) and scales it per grid value:
    that is the published computation only if alpha multiplies the finished update, bit for bit."""
    _, tvs = task_vectors
    method = BASELINES[name]
    build = method.builder()
    kwargs = {o: {"min_agreement": 2, "common_fraction": 0.8}[o] for o in method.options}
    lambdas = [[0.4] * len(tvs)] if method.per_task_lambdas else []
    unit = build(tvs, *lambdas, 1.0, **kwargs)
    for alpha in (0.3, 1.7):
        direct = build(tvs, *lambdas, alpha, **kwargs)
        assert all(torch.equal(direct[k], alpha * unit[k]) for k in unit), (name, alpha)
