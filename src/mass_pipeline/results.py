"""The JSON files of the evaluation steps, each with its writer beside its reader.

Every evaluate_* step writes a :class:`MethodResult` (one method's test accuracy per task on one
benchmark, with what was chosen on validation), evaluate_endpoints writes an :class:`Endpoints`
(one task's zero-shot and fine-tuned accuracy) and select_epsilon an :class:`EpsilonChoice`.
collect_results, the MASS model and the tables read them back through ``load``, which names the
file and the key when one is missing or unknown, so a field renamed on one side cannot silently
turn into an empty column on the other.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mass.io import FIX, ArtifactError, read_json, verify, write_json

R = TypeVar("R", bound="_JsonRecord")


class _JsonRecord:
    """save/load of a flat dataclass as one JSON object; optional fields left None are not written."""

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        data = read_json(path)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = {name for name, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if not isinstance(data, dict) or required - set(data) or set(data) - set(fields):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ArtifactError(f"{path}: not a {cls.__name__} file (keys {found}; expected {sorted(required)}, "
                                f"optionally {sorted(set(fields) - required)}); delete it and rerun the step "
                                "that wrote it")
        return cls(**data)


@dataclass
class MethodResult(_JsonRecord):
    """One method on one benchmark: test accuracy per task, in the benchmark's task order.

    ``hyperparameters`` holds what the step chose on validation (and the fixed values it used), so
    collect_results can put every choice beside the numbers it produced.
    """

    method: str
    test: dict[str, float]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # Routed methods: ``test`` is scored as the editions' code scores (the chosen head's logits fitted to
    # the true task's class count, mass.evaluation.fit_to_classes), this strictly (right head and class).
    test_strict: dict[str, float] | None = None
    val: dict[str, float] | None = None  # the baselines' validation accuracy at the chosen value
    routing_accuracy: dict[str, float] | None = None  # MASS: test samples routed to their own task
    mean_selected_tasks: float | None = None  # MASS: mean size of the selected subset
    distinct_task_subsets: int | None = None  # MASS: how many distinct merged models the test set needed
    size_fraction: dict[str, float] | None = None  # TSV-C: numbers stored over those of the dense task vector
    ranks: dict[str, Any] | None = None  # TSV-C: summary of the ranks kept per task

    def rows(self) -> list[dict[str, Any]]:
        """One row per task for the long results table."""
        return [{"method": self.method, "task": task, "accuracy": accuracy,
                 "strict_accuracy": (self.test_strict or self.test)[task],
                 "routing_accuracy": (self.routing_accuracy or {}).get(task),
                 "size_fraction": (self.size_fraction or {}).get(task)}
                for task, accuracy in self.test.items()]


@dataclass
class Endpoints(_JsonRecord):
    """One task's zero-shot (theta_pre) and fine-tuned accuracy with its own head: the normalisers."""

    task: str
    zeroshot_val: float
    zeroshot_test: float
    finetuned_val: float
    finetuned_test: float


@dataclass
class EpsilonChoice(_JsonRecord):
    """The TSV-M epsilon chosen on validation for one benchmark, and the merge file it selects."""

    epsilon: str
    merge_file: str
    selected_on: str
    scores: dict[str, dict[str, Any]]  # per epsilon: best layer and its validation routing accuracy


def read_csv(path: str | os.PathLike, **kwargs: Any):
    """A CSV artifact as a pandas DataFrame, after checking its checksum."""
    import pandas as pd  # only the table and plot steps read CSV files; the rest never import pandas

    path = Path(path)
    verify(path)
    try:
        return pd.read_csv(path, **kwargs)
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not a readable CSV file ({err}); {FIX}") from err
