"""What the paper compares: the merging baselines, the other MoErging methods and MASS's routers, one
registry entry each.

An entry names a method once: its result name, its row label in the tables and what the pipeline
needs to run it. Adding a baseline is one :class:`Baseline` here (its builder in
:mod:`mass.baselines`) plus its block under ``baselines:`` in the config and the schema; the
rules, the ``evaluate_baseline`` step and the tables read this registry.

This module imports nothing heavy: the workflow reads it when it plans (without loading torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class Baseline:
    """A merging baseline of Table 2.

    ``build`` is ``"<module>:<function>"``, called as ``function(task_vectors, alpha, **options)``
    (weight averaging takes no alpha). ``options`` are the config keys besides ``alphas`` passed to
    it, each with its type; ``per_task_lambdas`` marks Consensus TA, whose TALL-mask lambda is
    chosen per task on that task's validation split before alpha is. ``memory_copies``: the job's
    peak memory above 3 GB in multiples of one encoder, for its Snakemake ``mem_mb``
    (workflow/rules/common.smk): the step reads the task vectors from their files layer by layer or
    one task at a time (:class:`mass.task_vectors.TaskVectorFiles`), so the peak does not grow with T.
    Every method holds theta_pre, the merged update, its alpha-scaled copy, the weights applied and the
    model; Consensus TA also the task sum, one task vector as read and as a difference, the agreement
    count and one localised model. Measured in the dress rehearsal (ViT-B-32, 20 tasks, 2026-12-05):
    2.2-2.9 GB for the others, 3.4 GB for Consensus TA (asked: ~5.1 and ~6.5 GB); before, with all T task
    vectors in memory, 7.4-9.5 GB and 11.5-16.9 GB.
    """

    name: str
    label: str
    build: str
    alpha_grid: bool = True
    options: dict[str, type] = field(default_factory=dict)
    per_task_lambdas: bool = False
    memory_copies: int = 6

    def builder(self) -> Callable[..., Any]:
        module, function = self.build.split(":")
        return getattr(import_module(module), function)


@dataclass(frozen=True)
class Router:
    """A router of Table 3: ``first_pass`` is the model whose first pass it reads ("selected": the
    TSV-M merge at the epsilon chosen on validation, "pretrained": theta_pre); ``learned`` routers
    are trained on z_l of the validation images (``routing_features``), the others are Algorithm 2."""

    name: str
    label: str
    first_pass: str
    learned: bool


@dataclass(frozen=True)
class Moerging:
    """A MoErging method the final edition compares MASS with: it routes each image without knowing its
    task and picks the image's head itself. Its rule and step are ``evaluate_<name>``, its options the
    config block ``moerging.<name>``; ``sees_test_images``: as published it adapts on the unlabelled test
    images (its label carries a star, which the tables' captions explain)."""

    name: str
    label: str
    sees_test_images: bool = False


BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("weight_averaging", "Weight averaging", "mass.baselines:weight_average", alpha_grid=False),
    Baseline("task_arithmetic", "Task Arithmetic", "mass.baselines:task_arithmetic"),
    Baseline("consensus", "Consensus TA", "mass.baselines:consensus", options={"min_agreement": int},
             per_task_lambdas=True, memory_copies=10),
    Baseline("iso_c", "Iso-C", "mass.baselines:iso_c"),
    Baseline("iso_cts", "Iso-CTS", "mass.baselines:iso_cts", options={"common_fraction": float}),
)}

ROUTERS: dict[str, Router] = {r.name: r for r in (
    Router("nn", "nn", "selected", learned=True),
    Router("mlp", "mlp", "selected", learned=True),
    Router("proj_pre", "proj$_{PRE}$", "pretrained", learned=False),
    Router("proj", "proj$_{TSV-M}$", "selected", learned=False),
)}

MOERGING: dict[str, Moerging] = {m.name: m for m in (
    Moerging("smile", "SMILE"),
    Moerging("wemoe", "WEMoE$^\\star$", sees_test_images=True),
)}

# Table 2's rows, in the paper's order: the endpoints, the baselines with TSV-M among them, the other
# MoErging methods (final edition), MASS.
TABLE2_ROWS: dict[str, str] = {
    "zeroshot": "Zero-shot", "finetuned": "Fine-tuned",
    **{n: BASELINES[n].label for n in ("weight_averaging", "task_arithmetic", "consensus")},
    "tsvm": "TSV-M", **{n: BASELINES[n].label for n in ("iso_c", "iso_cts")},
    **{n: m.label for n, m in MOERGING.items()},
    "mass_proj": "MASS",
}
# The routing-accuracy table's rows: every method that picks an image's task itself.
ROUTING_ROWS: dict[str, str] = {**{f"mass_{r.name}": f"MASS, {r.label}" for r in ROUTERS.values()},
                                "mass_batched": "MASS, batched", **{n: m.label for n, m in MOERGING.items()}}
# Table 3's rows: MASS with each router, then the oracle router (TSV-C at the benchmark's k).
TABLE3_ROWS: dict[str, str] = {**{f"mass_{r.name}": r.label for r in ROUTERS.values()}, "tsvc": "oracle (= TSV-C)"}
# TSV-C's two settings (results/tables/tsvc.*).
TSVC_SETTINGS: dict[str, str] = {"tsvc": "k = floor(r / T)", "tsvc_size": "size budget"}
