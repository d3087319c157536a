"""The provenance check: a run's fine-tuned endpoints against the published ones of its edition."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from support.tables import run_cli, write_csv
from support.workflow import ROOT

from mass_pipeline.editions import EDITIONS, load_edition
from mass_pipeline.provenance import ACCEPTED, DEVIATION, MATCH, MISMATCH, TRAINED_HERE, UNPUBLISHED, compare
from mass_pipeline.results import Endpoints
from mass_pipeline.steps import check_provenance, make_tables

BENCHMARKS = yaml.safe_load((ROOT / "config.yaml").read_text())["benchmarks"]


@pytest.mark.parametrize("name", ["first", "final"])
def test_published_fine_tuned_row_is_the_truncated_mean_of_the_per_task_record(name):
    """Two records of each edition agree: the per-task accuracies (the authors' result files) average, per
    benchmark and truncated to one decimal, to the fine-tuned row of the edition's Table 2."""
    edition = load_edition(name)
    row = edition.tables["table2_absolute"].values["finetuned"]
    for backbone, per_task in edition.finetuned_accuracy.items():
        for i, bench in enumerate(("8", "14", "20")):
            mean = 100 * sum(per_task[t] for t in BENCHMARKS[bench]) / len(BENCHMARKS[bench])
            assert math.floor(mean * 10) / 10 == row[backbone][i], (name, backbone, bench, mean)


def test_fusionbench_reference_agrees_with_itself_and_leaves_out_emnist():
    """FusionBench's docs give per-task fine-tuned accuracies of all 20 models and an 8-task table whose
    fine-tuned row is the mean of a second evaluation (up to 0.2 points apart per task): the means agree
    to 0.1. Its EMNIST model is EMNIST letters, so this catalog's EMNIST (digits) has no published number
    and its EMNISTLetters has the one recorded in tests/fixtures/sources/fusionbench.json."""
    from support.hub_files import facts

    fusion = load_edition("fusionbench")
    row = fusion.tables["table2_absolute"]
    letters = facts("fusionbench")["emnist_letters_finetuned"]
    for backbone, per_task in fusion.finetuned_accuracy.items():
        assert len(per_task) == 20 and "EMNIST" not in per_task
        assert per_task["EMNISTLetters"] == letters[backbone]
        mean = 100 * sum(per_task[t] for t in BENCHMARKS["8"]) / 8
        assert abs(mean - row.value("finetuned", backbone, "8")[0]) <= 0.1, (backbone, mean)
        assert row.value("task_arithmetic", backbone, "14") == (None, None)
    assert fusion.published_finetuned("ViT-B-32", "SUN397") == pytest.approx(0.7486)
    assert row.value("wemoe", "ViT-B-32", "8") == (89.2, "merging") and "task known" in row.notes["wemoe/ViT-B-32/8"]


def test_every_edition_names_the_record_of_each_number():
    for name in EDITIONS:
        edition = load_edition(name)
        for table in edition.tables.values():
            assert {table.record, *table.method_records.values()} <= set(edition.records)
            for record in edition.records.values():
                assert record.kind in ("primary", "secondary") and len(record.cite) > 20
        if edition.finetuned_accuracy:
            assert edition.records[edition.finetuned_record].kind == "primary"
            assert all(0.5 < v <= 1 for accs in edition.finetuned_accuracy.values() for v in accs.values())
    assert load_edition("first").published_finetuned("ViT-B-32", "DTD") == pytest.approx(0.9798, abs=1e-4)
    assert load_edition("final").published_finetuned("ViT-B-32", "DTD") == pytest.approx(0.7819, abs=1e-4)
    assert not load_edition("demo").finetuned_accuracy
    # only the final edition's fine-tuned row is confirmed by a primary record; the rest is a transcription
    final = load_edition("final").tables["table2_absolute"]
    assert final.value("finetuned", "ViT-B-32", "8") == (90.3, "accs")
    assert final.value("mass_proj", "ViT-B-32", "8") == (87.0, "papernotes")
    assert load_edition("final").records["papernotes"].secondary


def test_verdicts_by_hand():
    first = load_edition("first")
    measured = {"DTD": 0.782, "Cars": 0.7818679268747668 + 0.009, "MNIST": 0.95, "SVHN": 0.90, "EMNIST": 0.99,
                "GTSRB": 0.50}
    rows = {c.task: c for c in compare(first, "ViT-B-32", measured, tolerance=1.0, accepted=frozenset({"SVHN"}),
                                       trained_here=frozenset({"EMNIST"}))}
    assert rows["DTD"].verdict == DEVIATION and "tall_masks/issues/1" in rows["DTD"].note
    assert (rows["DTD"].published, rows["DTD"].measured, rows["DTD"].difference) == (97.98, 78.2, -19.78)
    assert rows["Cars"].verdict == MATCH  # 0.9 points off, within 1.0
    assert rows["MNIST"].verdict == MISMATCH and rows["MNIST"].difference == pytest.approx(-4.69)
    assert rows["SVHN"].verdict == ACCEPTED
    assert rows["EMNIST"].verdict == TRAINED_HERE
    assert rows["GTSRB"].verdict == MISMATCH
    assert compare(first, "tiny", {"digits": 0.9}, 1.0)[0].verdict == UNPUBLISHED


def _endpoints(tmp_path, accuracies: dict[str, float]) -> list[str]:
    paths = []
    for task, ft in accuracies.items():
        Endpoints(task, 0.3, 0.3, ft, ft).save(tmp_path / f"{task}.json")
        paths.append(str(tmp_path / f"{task}.json"))
    return paths


def test_first_edition_on_todays_dtd_goes_on_and_shows_the_deviation(tmp_path, monkeypatch):
    first = load_edition("first").finetuned_accuracy["ViT-B-32"]
    measured = {t: first[t] for t in BENCHMARKS["8"]} | {"DTD": 0.7819}
    run_cli(check_provenance, ["--edition", "first", "--backbone", "ViT-B-32", "--endpoints",
                               *_endpoints(tmp_path, measured), "--tolerance", "1.0", "--out", tmp_path / "p.csv"],
            monkeypatch)
    table = pd.read_csv(tmp_path / "p.csv").set_index("task")
    assert table.loc["DTD", "verdict"] == DEVIATION and "December 2024" in table.loc["DTD", "note"]
    assert (table.drop(index="DTD").verdict == MATCH).all()
    # the tables: endpoints_vs_published, and the deviation footnoted under Table 2
    from support.tables import hand_written_per_task
    write_csv(hand_written_per_task(), tmp_path / "per_task.csv")
    run_cli(make_tables, ["--per-task", tmp_path / "per_task.csv", "--edition", "first", "--wemoe-adapt-on", "test",
                          "--provenance", tmp_path / "p.csv", "--out-dir", tmp_path], monkeypatch)
    vs = pd.read_csv(tmp_path / "endpoints_vs_published.csv").set_index("task")
    assert vs.loc["DTD", "published"] == 97.98 and vs.loc["DTD", "measured"] == 78.19
    assert "ViT-B-32 DTD: fine-tuned 78.2 here vs 98.0 published" in (tmp_path / "table2.tex").read_text()


def test_a_checkpoint_of_another_task_stops_the_run_with_both_numbers(tmp_path, monkeypatch):
    final = load_edition("final").finetuned_accuracy["ViT-B-32"]
    measured = {t: final[t] for t in BENCHMARKS["8"]} | {"SVHN": 0.21}  # the hub served another task's encoder
    with pytest.raises(SystemExit) as stop:
        run_cli(check_provenance, ["--edition", "final", "--backbone", "ViT-B-32", "--endpoints",
                                   *_endpoints(tmp_path, measured), "--tolerance", "1.0",
                                   "--out", tmp_path / "p.csv"], monkeypatch)
    message = str(stop.value.code)
    assert "ViT-B-32 SVHN: fine-tuned test accuracy 21.00% measured here, 96.67% published" in message
    assert "accs.json" in message and "provenance.accept" in message and "The two editions" in message
    assert "Cars" not in message
    assert not (tmp_path / "p.csv").exists()


def test_demo_edition_has_nothing_to_check(tmp_path, monkeypatch, capsys):
    run_cli(check_provenance, ["--edition", "demo", "--backbone", "tiny", "--endpoints",
                               *_endpoints(tmp_path, {"digits": 0.9}), "--tolerance", "1.0",
                               "--out", tmp_path / "p.csv"], monkeypatch)
    assert "publishes no fine-tuned accuracies: nothing to check" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "p.csv").verdict.tolist() == [UNPUBLISHED]
