"""Every default lives in one place (issue 29 item 5): an option that every rule calling a step passes
(its value comes from the config) has no argparse default of its own that could drift from config.yaml."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

import pytest
import yaml
from support.workflow import ROOT, planned_commands

STEPS = sorted(p.stem for p in (ROOT / "src/mass_pipeline/steps").glob("*.py") if not p.stem.startswith("_"))


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def step_parser(step: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a step's main() builds, taken at its parse_args call."""
    def capture(self, *args, **kwargs):
        raise _Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [step])
    try:
        importlib.import_module(f"mass_pipeline.steps.{step}").main()
    except _Parsed as done:
        return done.parser
    raise AssertionError(f"mass_pipeline.steps.{step}.main() never parsed its arguments")


@pytest.fixture(scope="module")
def passed_by_every_rule(tmp_path_factory) -> dict[str, set[str]]:
    """Per step, the options every planned command of it passes, over the paper's and the demo's DAGs."""
    own = tmp_path_factory.mktemp("own")
    for split in ("train", "test"):
        (own / "folder" / split / "oak").mkdir(parents=True)
    (own / "MNIST.safetensors").write_bytes(b"")
    declared = {"tasks": {"Trees": {"folder": str(own / "folder")},
                          "Birds": {"hub": {"repo": "org/birds", "revision": "0" * 40}}},
                "benchmarks": {"mine": ["Trees", "Birds", "MNIST"]},
                "run": {"backbones": ["ViT-B-32"], "benchmarks": ["mine"]}, "svd": {"rank_fraction": 0.34},
                "finetuned": {"files": {"ViT-B-32": {"MNIST": str(own / "MNIST.safetensors")}}}}
    presets = [(p, yaml.safe_load((ROOT / f"workflow/presets/{p}.yaml").read_text())) for p in ("demo", "final")]
    flags: dict[str, set[str]] = {}
    for name, overlay in [("paper", {}), ("declared", declared), *presets]:
        _, lines, _ = planned_commands(tmp_path_factory.mktemp(name), overlay, [])
        for line in lines:
            step = line.split()[2].removeprefix("mass_pipeline.steps.")
            passed = set(re.findall(r"(?<=\s)--[a-z][a-z0-9-]*", line))
            flags[step] = flags[step] & passed if step in flags else passed
    return flags


def test_every_step_is_planned_by_some_rule(passed_by_every_rule):
    assert set(STEPS) <= set(passed_by_every_rule)


@pytest.mark.parametrize("step", STEPS)
def test_no_argparse_default_for_an_option_every_rule_passes(step, passed_by_every_rule, monkeypatch):
    parser = step_parser(step, monkeypatch)
    doubled = sorted(flag for action in parser._actions
                     if not (action.default is None or action.default is False or action.default == []
                             or action.default is argparse.SUPPRESS)
                     for flag in action.option_strings if flag in passed_by_every_rule.get(step, set()))
    assert not doubled, (f"mass_pipeline.steps.{step}: {doubled} have argparse defaults, yet every rule passes "
                         "them from the config; make them required=True")
