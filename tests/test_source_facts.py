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
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from test_download import HubServer, hub  # noqa: F401  (fixture)
from test_sources import gray, parquet_bytes, write_raw

from mass.data import catalog
from mass.data.prepare import prepare
from mass.data.store import load_split
from mass.download import LockFile
from mass.encoder import create_clip
from mass.fetch import fetch_finetuned
from mass.heads import prompt
from mass.io import load_tensors

FIXTURES = Path(__file__).parent / "fixtures" / "sources"


def facts(name: str) -> dict:
    data = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    assert all(isinstance(f, dict) and f.get("source") for f in data.values()), f"{name}: every fact needs a source"
    return {key: fact["value"] for key, fact in data.items()}


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_every_fact_cites_where_it_was_read(name):
    assert facts(name)


@pytest.mark.parametrize("task", ["Food101", "FER2013", "KMNIST", "SUN397", "DTD"])
def test_catalog_matches_the_recorded_source(task):
    fact, src = facts(task), catalog.source(task)
    assert src.repo == fact["repo"]
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


@pytest.mark.parametrize("task", ["Food101", "FER2013", "KMNIST", "EMNIST", "Flowers102"])
def test_prompts_are_those_of_the_code_that_made_the_published_heads(task):
    fact = facts(task)
    classnames, templates = catalog.task_prompts(task)
    if "published_classnames" in fact:
        assert classnames == fact["published_classnames"]
    if "published_templates" in fact:
        assert templates == fact["published_templates"]


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
