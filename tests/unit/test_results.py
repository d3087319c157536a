"""The evaluation steps' JSON files (mass_pipeline.results): what is saved is what is loaded, and a file with
a missing or unknown key is refused naming the file and the key instead of becoming an empty column."""

from __future__ import annotations

import json

import pytest

from mass.io import ArtifactError, read_json, write_json
from mass_pipeline.results import Endpoints, EpsilonChoice, MethodResult

RECORDS = {
    "mass": MethodResult(method="mass_proj", test={"Cars": 0.5, "DTD": 0.25}, hyperparameters={"layer": "9.mlp.out"},
                         test_strict={"Cars": 0.5, "DTD": 0.2},
                         routing_accuracy={"Cars": 1.0, "DTD": 0.5}, mean_selected_tasks=1.5,
                         distinct_task_subsets=3),
    "tsvc": MethodResult(method="tsvc", test={"Cars": 0.75}, size_fraction={"Cars": 0.1},
                         ranks={"Cars": {"min": 2, "max": 4}}),
    "endpoints": Endpoints(task="Cars", zeroshot_val=0.5, zeroshot_test=0.4, finetuned_val=0.9, finetuned_test=0.8),
    "epsilon": EpsilonChoice(epsilon="0.3", merge_file="merge/eps0.3.safetensors", selected_on="val",
                             scores={"0.3": {"layer": "9", "val_routing_accuracy": 0.7}}),
}


@pytest.mark.parametrize("record", RECORDS.values(), ids=RECORDS)
def test_saved_record_loads_equal(tmp_path, record):
    record.save(tmp_path / "r.json")
    assert type(record).load(tmp_path / "r.json") == record


def test_unset_optional_fields_are_not_written(tmp_path):
    MethodResult(method="weight_averaging", test={"Cars": 0.5}).save(tmp_path / "r.json")
    assert set(read_json(tmp_path / "r.json")) == {"method", "test", "hyperparameters"}


def test_rows_are_one_per_task_with_the_optional_columns():
    rows = RECORDS["mass"].rows()
    assert [r["task"] for r in rows] == ["Cars", "DTD"]
    assert rows[1] == {"method": "mass_proj", "task": "DTD", "accuracy": 0.25, "strict_accuracy": 0.2,
                       "routing_accuracy": 0.5, "size_fraction": None}


@pytest.mark.parametrize("change, key", [(lambda d: d.pop("test"), "test"),
                                         (lambda d: d.update(routing_acuracy={}), "routing_acuracy")],
                         ids=["missing", "misspelled"])
def test_file_with_a_wrong_key_is_refused_naming_file_and_key(tmp_path, change, key):
    data = json.loads(json.dumps({"method": "mass_proj", "test": {"Cars": 0.5}}))
    change(data)
    write_json(tmp_path / "mass_proj.json", data)
    with pytest.raises(ArtifactError, match=rf"mass_proj\.json: not a MethodResult file.*{key}.*rerun"):
        MethodResult.load(tmp_path / "mass_proj.json")
