"""The catalog, the label mapping and the fetch logic against the facts of the real sources.

Each ``tests/fixtures/sources/<name>.json`` records what the code depends on about one source
(repository, split and column names, class names in label order, row counts, file paths), every
fact with ``source``: where it was read (dataset card, hub file listing, or the code that made the
published checkpoints). Parquet files built from those facts go through ``prepare``; checkpoint
files laid out as in ``nik-dim/tall_masks`` go through ``fetch`` on the 127.0.0.1 hub of
``test_download``.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from support.parquet import gray, parquet_bytes, png, write_raw

from mass.data.store import load_split
from mass.encoder import create_clip
from mass.heads import prompt
from mass.io import load_tensors
from mass_pipeline.data import catalog
from mass_pipeline.data.prepare import prepare
from mass_pipeline.sources.download import LockFile
from mass_pipeline.sources.fetch import fetch_finetuned

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def facts(name: str) -> dict:
    data = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    assert all(isinstance(f, dict) and f.get("source") for f in data.values()), f"{name}: every fact needs a source"
    return {key: fact["value"] for key, fact in data.items()}


def tasks_with(*keys: str) -> list[str]:
    """The catalog tasks whose fixture records one of ``keys``."""
    return [n for n in FIXTURE_NAMES if n in catalog.TASKS and any(k in facts(n) for k in keys)]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fact_cites_where_it_was_read(name):
    assert facts(name)


def test_every_catalog_task_has_a_fixture():
    assert set(catalog.TASKS) <= set(FIXTURE_NAMES)


@pytest.mark.parametrize("task", tasks_with("repo"))
def test_catalog_matches_the_recorded_source(task):
    fact, src = facts(task), catalog.source(task)
    assert src.repo == fact["repo"]
    if "data_dir" in fact:
        assert src.data_dir == fact["data_dir"]
    if "splits" in fact:
        assert (src.train_split, src.test_split) == (fact["splits"]["train"], fact["splits"]["test"])
    if "ref" in fact:
        assert src.ref == fact["ref"]
    if "columns" in fact:
        assert (src.image_column, src.label_column) == (fact["columns"]["image"], fact["columns"]["label"])
    if "rows" in fact:
        assert src.hub_rows == (fact["rows"]["train"], fact["rows"]["test"])
    if "expected_val" in fact:
        assert src.expected_val == fact["expected_val"]


def test_sun397_and_dtd_expect_the_hub_copies_val_sizes():
    assert catalog.source("SUN397").expected_val == 1985 and catalog.source("DTD").expected_val == 376
    assert "disjoint" in " ".join(catalog.source("DTD").notes)
    assert "1985" in " ".join(catalog.source("SUN397").notes)


@pytest.mark.parametrize("task", tasks_with("published_classnames", "published_templates"))
def test_prompts_are_those_of_the_code_that_made_the_published_heads(task):
    fact = facts(task)
    classnames, templates = catalog.task_prompts(task)
    if "published_classnames" in fact:
        assert classnames == fact["published_classnames"]
    if "published_templates" in fact:
        assert templates == fact["published_templates"]


@pytest.mark.parametrize("task", tasks_with("hub_classnames", "hub_classnames_first"))
def test_hub_label_names_agree_with_the_published_order(task):
    """The hub copy's label names, mapped by name, land on the published class of the same name."""
    fact = facts(task)
    classnames, _ = catalog.task_prompts(task)
    names = [c if isinstance(c, str) else c[0] for c in classnames]
    if "hub_classnames" not in fact:
        first = fact["hub_classnames_first"]
        assert [catalog.normalise_name(n) for n in names[:len(first)]] == [catalog.normalise_name(n) for n in first]
        return
    hub_names = fact["hub_classnames"]
    perm, _ = catalog.label_permutation(task, classnames, hub_names, catalog.label_aliases(task))
    perm = perm or list(range(len(hub_names)))
    aliases = {catalog.normalise_name(k): v for k, v in catalog.label_aliases(task).items()}
    for i, name in enumerate(hub_names):
        key = catalog.normalise_name(name)
        ours = classnames[perm[i]]
        synonyms = [ours] if isinstance(ours, str) else ours
        assert catalog.normalise_name(aliases.get(key, name)) in {catalog.normalise_name(c) for c in synonyms}


@pytest.mark.parametrize("task", ["MNIST", "RESISC45", "OxfordIIITPet", "CIFAR10", "FashionMNIST", "RenderedSST2",
                                  "EMNISTLetters"])
def test_hub_labels_already_in_the_published_order_are_kept(task):
    classnames, _ = catalog.task_prompts(task)
    assert catalog.label_permutation(task, classnames, facts(task)["hub_classnames"]) == (None, [])


@pytest.mark.parametrize("task", [t for t in tasks_with("files") if len(facts(t)["files"]) > 1])
def test_split_files_pick_the_recorded_parquet_files(task):
    files = facts(task)["files"]
    src = catalog.source(task)
    chosen = src.split_files(files)
    assert [posixpath.basename(f).split("-")[0] for f in chosen["train"]] == [src.train_split]
    assert [posixpath.basename(f).split("-")[0] for f in chosen["test"]] == [src.test_split]


def test_emnist_letters_is_fusionbench_emnist_letters_stored_as_the_hub_holds_it():
    """EMNISTLetters is FusionBench's emnist_letters (its own encoder, class names and template), in no benchmark
    of the paper; its images keep the hub copy's orientation (what FusionBench's encoder saw), and its revision
    is resolved at first download (no full commit in the records)."""
    from mass_pipeline.sources.layouts import HubFile, layout

    fact, fusion = facts("EMNISTLetters"), facts("fusionbench")
    src = catalog.source("EMNISTLetters")
    assert src.orientation is None and src.revision is None and fact["revision"] is None
    assert "EMNISTLetters" not in catalog.BENCHMARKS[20] and fusion["twenty_tasks"][17] == "EMNISTLetters"
    assert fusion["task_names"]["EMNISTLetters"] == fact["fusionbench_task"]
    assert layout("fusionbench").finetuned(fusion["owner"], "ViT-B-32", "EMNISTLetters") == HubFile(
        "tanganke/clip-vit-base-patch32_emnist_letters", fusion["file"])
    assert set(fusion["twenty_tasks"]) == set(fusion["task_names"]) <= set(catalog.TASKS)


def test_pcam_boolean_labels_are_classes_0_and_1(tmp_path):
    fact = facts("PCAM")
    assert fact["columns"]["label_type"] == "bool"

    def pcam_parquet(images: np.ndarray, labels: list[bool]) -> bytes:
        cells = [{"bytes": png(img), "path": f"{i}.png"} for i, img in enumerate(images)]
        image = pa.array(cells, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        table = pa.table({fact["columns"]["image"]: image, fact["columns"]["label"]: pa.array(labels, type=pa.bool_())})
        features = {"image": {"_type": "Image"}, "label": {"dtype": "bool", "_type": "Value"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    images = gray(24, 5, size=8)
    train = pcam_parquet(images[:20], [bool(i % 2) for i in range(20)])
    stored, notes = prepared_labels(tmp_path, "PCAM", train, pcam_parquet(images[20:], [True, False, False, True]))
    assert stored == [1, 0, 0, 1]
    classnames, _ = catalog.task_prompts("PCAM")
    assert classnames[1] == fact["published_classnames"][1] and "metastatic" in classnames[1]
    assert any("the source stores no class names" in n for n in notes)


def test_cifar100_names_keep_torchvision_underscores():
    classnames, _ = catalog.task_prompts("CIFAR100")
    assert [c for c in classnames if "_" in c] == facts("CIFAR100")["published_underscored"]


def test_synonym_lists_render_as_the_published_code_rendered_them():
    (angry, *_, neutral), templates = catalog.task_prompts("FER2013")
    assert prompt(templates[0], neutral) == "a photo of a ['neutral', 'bored'] looking face."
    assert prompt(templates[1], angry) == "a photo of a face showing the emotion: ['angry']."
    assert prompt('a photo of the digit character: "{c}".', "7") == 'a photo of the digit character: "7".'


def prepared_labels(tmp_path: Path, task: str, train: bytes, test: bytes) -> tuple[list[int], list[str]]:
    write_raw(tmp_path / "raw", task, train, test)
    info = prepare(task, tmp_path / "raw", tmp_path / "data", image_size=8)
    return load_split(tmp_path / "data", task, "test")[1].tolist(), info.notes


def test_food101_hub_labels_are_mapped_onto_the_published_order(tmp_path):
    fact = facts("Food101")
    hub_names, published = fact["hub_classnames"], fact["published_classnames"]
    labels = np.array([16, 17, 0, 100] * 3)  # the hub's cheesecake, cheese_plate, apple_pie, waffles
    images = gray(len(labels) + 4, 1, size=8)
    stored, notes = prepared_labels(tmp_path, "Food101", parquet_bytes(images[:len(labels)], labels, hub_names),
                                    parquet_bytes(images[-4:], np.array([16, 17, 0, 100]), hub_names))
    assert stored == [17, 16, 0, 100]
    assert [published[i] for i in stored] == ["cheesecake", "cheese_plate", "apple_pie", "waffles"]
    assert any("16 'cheesecake' -> 17" in n and "17 'cheese_plate' -> 16" in n for n in notes)


def test_fer2013_alphabetical_labels_are_mapped_onto_fer_order(tmp_path):
    fact = facts("FER2013")
    images = gray(18, 2, size=8)
    train = parquet_bytes(images[:14], np.arange(14) % 7, image_col="jpg", label_col="cls", struct=False)
    test = parquet_bytes(images[14:], np.array([3, 4, 5, 6]), image_col="jpg", label_col="cls", struct=False)
    stored, notes = prepared_labels(tmp_path, "FER2013", train, test)
    published = [names[0] for names in fact["published_classnames"]]
    assert [published[i] for i in stored] == [fact["hub_classnames"][i] for i in (3, 4, 5, 6)]
    assert stored == [3, 6, 4, 5] and any("mapped by name" in n for n in notes)


def test_kmnist_hiragana_labels_match_the_romanised_names(tmp_path):
    fact = facts("KMNIST")
    images = gray(24, 3, size=8)
    labels = np.arange(20) % 10
    stored, notes = prepared_labels(tmp_path, "KMNIST", parquet_bytes(images[:20], labels, fact["hub_classnames"]),
                                    parquet_bytes(images[20:], np.array([0, 9, 3, 5]), fact["hub_classnames"]))
    assert stored == [0, 9, 3, 5] and not any("spelled differently" in n for n in notes)


def test_differently_spelled_flowers_keep_their_labels_with_a_note():
    published, _ = catalog.task_prompts("Flowers102")
    source = ["globe-flower" if c == "globe flower" else "ball moss" if c == "air plant" else c for c in published]
    perm, notes = catalog.label_permutation("Flowers102", published, source)
    assert perm is None  # 'globe-flower' matches by name; 'ball moss' is noted, not moved
    assert "'ball moss'" in notes[0] and "101 of 102" in notes[0]


def test_finetuned_checkpoint_at_the_published_path_with_its_folder_spelling(hub, tmp_path):  # noqa: F811
    files = facts("tall_masks")["files"]
    b16 = next(f for f in files if f.startswith("single_task/VIT-B-16/"))
    torch.manual_seed(0)
    visual = create_clip("mass-tiny-vit").visual.state_dict()
    buf = io.BytesIO()
    torch.save(OrderedDict((f"model.visual.{k}", v) for k, v in visual.items()), buf)
    hub.add("nik-dim/tall_masks", b16, buf.getvalue())
    task = b16.split("/")[2].removesuffix("Val")
    out = tmp_path / "ckpt.safetensors"
    fetch_finetuned("mass-tiny-vit", task, facts("tall_masks")["repo"], out, LockFile(tmp_path / "lock.json"),
                    endpoint=hub.url, hub_model_dir="ViT-B-16", retries=0)
    assert load_tensors(out).keys() == visual.keys()
