"""The rehearsal's hub generator on its own (seconds): every catalog task's repository comes from its
fixture, and the files go through the pipeline's fetch and prepare as the real ones would."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from support.hub_files import FIXTURES, commit_of, dataset_repo

from mass.data.store import load_split
from mass_pipeline.data import catalog
from mass_pipeline.data.prepare import prepare
from mass_pipeline.sources.download import LockFile
from mass_pipeline.sources.fetch import fetch_dataset


def test_every_catalog_task_has_the_facts_the_generator_needs():
    for task in catalog.TASKS:
        assert "images" in json.loads((FIXTURES / f"{task}.json").read_text()), task


def served_and_fetched(hub, tmp_path, task: str) -> tuple[dict, catalog.DatasetSource]:
    """Generate ``task``'s repository onto the hub and download it with the pipeline's fetch: its manifest."""
    repo, ref, files, _ = dataset_repo(task, n_train=20, n_test=3)
    for name, data in files.items():
        hub.add(repo, name, data, commit=commit_of(repo, ref), branch=ref)
    manifest = fetch_dataset(task, tmp_path / "raw", LockFile(tmp_path / "lock.json"), endpoint=hub.url, retries=0)
    return manifest, catalog.source(task)


@pytest.mark.parametrize("task", ["PCAM", "FER2013", "Food101", "EMNIST", "OxfordIIITPet", "EuroSAT"])
def test_generated_source_goes_through_fetch_and_prepare(hub, tmp_path, task):
    manifest, src = served_and_fetched(hub, tmp_path, task)
    label = pq.read_schema(tmp_path / "raw" / manifest["splits"]["test"][0]).field(src.label_column)
    assert str(label.type) == {"PCAM": "bool"}.get(task, "int64")
    info = prepare(task, tmp_path / "raw", tmp_path / "data", image_size=32, emnist_orientation="mnist",
                   max_images=3)
    images, labels = load_split(tmp_path / "data", task, "test")
    assert images.shape == (3, 32, 32, 3) and len(labels) == 3
    assert load_split(tmp_path / "data", task, "val")[0].shape[0] == (3 if src.val_size else 2)
    assert any("sources.max_images" in note for note in info.notes)
    assert info.split_sizes["val"] == (3 if src.val_size else 2) and info.split_sizes["test"] == 3
    train_rows = pq.ParquetFile(tmp_path / "raw" / manifest["splits"]["train"][0]).metadata.num_rows
    assert 0 < info.split_sizes["train"] < train_rows
    assert len(info.source_image_sizes) == 2 and info.source_image_sizes[0] <= info.source_image_sizes[1]
    assert hub.misses() == []


def test_description_pool_stand_in_has_the_real_files_structure_and_the_overlays_pin(tmp_path):
    """config.yaml pins the real pool's size and sha256; the rehearsal serves a stand-in with the same line
    structure (distinct non-empty lines, no newline after the last; a tenth of its 3,498 lines) and pins its own."""
    import hashlib

    import yaml
    from support.hub_files import DESCRIPTIONS, descriptions
    from support.workflow import ROOT

    from mass_pipeline.sources.descriptions import fetch_descriptions, read_descriptions

    real = yaml.safe_load((ROOT / "config.yaml").read_text())["textspan"]["descriptions"]
    assert (real["size"], len(real["sha256"])) == (88419, 64)
    data = descriptions()
    lines = data.decode().split("\n")
    assert len(lines) == len(set(lines)) == DESCRIPTIONS and all(lines) and not data.endswith(b"\n")
    here = yaml.safe_load((ROOT / "tests/workflow/rehearsal/rehearsal.yaml").read_text())["textspan"]["descriptions"]
    assert (here["size"], here["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    out = tmp_path / "pool.txt"
    out.write_bytes(data)
    fetch_descriptions(real["repo"], real["commit"], real["path"], out, LockFile(tmp_path / "lock.json"),
                       sha256=here["sha256"], size=here["size"])
    assert read_descriptions(out) == lines


def test_final_editions_class_spaces_agree_with_the_sources_names():
    """The final edition's remaps (conf/dataset/<Task>.yaml) move each source class onto the class of the same
    name: RESISC45 and CIFAR10 exactly, STL10 with 'car' named 'automobile'; the unused 11th class is
    CIFAR10's monkey and STL10's frog."""
    from support.hub_files import facts

    from mass_pipeline.editions import load_edition

    spaces = load_edition("final").class_spaces
    hub = {"RESISC45": facts("RESISC45")["hub_classnames"], "CIFAR10": facts("CIFAR10")["hub_classnames"],
           "STL10": facts("STL10")["published_classnames"]}  # STL10: the hub keeps torchvision's order
    for task, names in hub.items():
        space = spaces[task]
        moved = [space.classnames[space.label_map[i]] for i in range(len(names))]
        assert moved == [{"car": "automobile"}.get(n, n) for n in names], task
    assert set(spaces["CIFAR10"].classnames) - {spaces["CIFAR10"].classnames[i] for i in spaces["CIFAR10"].label_map} \
        == {"monkey"}
    assert set(spaces["STL10"].classnames) - {spaces["STL10"].classnames[i] for i in spaces["STL10"].label_map} \
        == {"frog"}


@pytest.mark.parametrize("task", ["RESISC45", "STL10", "PCAM", "FER2013", "MNIST"])
def test_final_edition_stores_the_sources_classes_with_its_remaps(hub, tmp_path, task):
    from mass_pipeline.data.prepare import read_labels, source_label_names
    from mass_pipeline.editions import ClassSpace, load_edition

    manifest, src = served_and_fetched(hub, tmp_path, task)
    test_file = tmp_path / "raw" / manifest["splits"]["test"][0]
    info = prepare(task, tmp_path / "raw", tmp_path / "data", image_size=16, max_images=3, edition="final",
                   splits=("val", "test"))
    space = load_edition("final").class_spaces.get(task, ClassSpace())
    source_names = source_label_names(test_file, src.label_column) or list(src.source_classnames or ())
    assert info.classnames == list(space.classnames or source_names)
    assert info.head == task and any("final edition's head" in note for note in info.notes)
    source_labels = read_labels([test_file], src.label_column)[:3]
    stored = load_split(tmp_path / "data", task, "test")[1]
    expected = [space.label_map[y] for y in source_labels] if space.label_map else list(source_labels)
    assert list(stored) == expected
