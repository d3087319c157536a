"""The dataset catalog: tasks, prompts, shared heads, split files and validation carving."""

from __future__ import annotations

import numpy as np
import pytest
from support.parquet import gray, parquet_bytes, write_raw

from mass.data.store import carve_validation, load_split
from mass.io import ArtifactError
from mass_pipeline.data import catalog
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.data.prepare import carve, prepare
from mass_pipeline.steps.build_head import head_prompts


def test_catalog_covers_the_20_tasks_with_consistent_prompts():
    assert catalog.TASKS == catalog.BENCHMARKS[20] + catalog.EXTRA_TASKS and len(set(catalog.BENCHMARKS[20])) == 20
    assert not set(catalog.EXTRA_TASKS) & set(catalog.BENCHMARKS[20])
    assert catalog.BENCHMARKS[8] == ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SVHN", "SUN397")
    counts = {"Cars": 196, "DTD": 47, "EuroSAT": 10, "GTSRB": 43, "RESISC45": 45, "SUN397": 397, "OxfordIIITPet": 37,
              "Flowers102": 102, "CIFAR100": 100, "PCAM": 2, "FER2013": 7, "Food101": 101, "RenderedSST2": 2,
              "EMNISTLetters": 26}
    for task in catalog.TASKS:
        classnames, templates = catalog.task_prompts(task)
        names = [c if isinstance(c, str) else tuple(c) for c in classnames]
        assert len(classnames) == counts.get(task, 10) and len(set(names)) == len(classnames)
        assert templates and all("{c}" in t for t in templates)
        assert catalog.source(task).revision is None
    assert catalog.source("Food101").test_split == "validation"
    assert catalog.source("MNIST", repo="me/mnist", revision="a" * 40).repo == "me/mnist"


def test_shared_head_merges_stl10_and_cifar10():
    head = catalog.shared_head("STL10")
    assert head == catalog.shared_head("CIFAR10") and len(head.classnames) == 11
    stl, _ = catalog.task_prompts("STL10")
    cifar, _ = catalog.task_prompts("CIFAR10")
    alias = {"car": "automobile"}
    for task, names in (("STL10", stl), ("CIFAR10", cifar)):
        assert [head.classnames[i] for i in head.label_maps[task]] == [alias.get(n, n) for n in names]
    assert catalog.shared_head("MNIST") is None


def test_split_files_selects_shards_by_split_and_folder():
    svhn = catalog.source("SVHN")
    listing = ["cropped_digits/train-00000-of-00001.parquet", "cropped_digits/test-00000-of-00001.parquet",
               "cropped_digits/extra-00000-of-00002.parquet", "full_numbers/train-00000-of-00001.parquet",
               "README.md"]
    assert svhn.split_files(listing) == {"train": ["cropped_digits/train-00000-of-00001.parquet"],
                                         "test": ["cropped_digits/test-00000-of-00001.parquet"]}
    food = catalog.source("Food101")
    shards = [f"plain_text/train-0000{i}-of-00002.parquet" for i in (1, 0)] + ["plain_text/validation-0.parquet"]
    assert food.split_files(shards)["train"] == sorted(shards[:2])
    converted = ["default/train/0000.parquet", "default/test/0000.parquet", "default/partial-x/0000.parquet"]
    assert catalog.source("FER2013").split_files(converted)["test"] == ["default/test/0000.parquet"]
    with pytest.raises(ArtifactError, match="ambiguous"):
        catalog.source("MNIST").split_files(listing[:2] + ["full_numbers/test-0.parquet", listing[3]])
    with pytest.raises(ArtifactError, match="no parquet files for split 'validation'"):
        food.split_files(shards[:2])


def test_validation_carving_sizes():
    train, val = carve(50, None)
    assert (len(train), len(val)) == (45, 5)
    for got, want in zip(carve(50, None), carve_validation(50), strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(carve(100_000, None)[1]) == catalog.VAL_MAX
    train, val = carve(21_600, catalog.source("EuroSAT").val_size)
    assert (len(train), len(val)) == (18_900, 2_700)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(21_600))
    with pytest.raises(ArtifactError):
        carve(100, 2700)


def test_stl10_and_cifar10_share_a_head_only_when_both_are_in_the_benchmark(tmp_path):
    labels = np.arange(20) % 10
    for task, seed in (("STL10", 3), ("CIFAR10", 4)):
        imgs = gray(20, seed, size=8)
        write_raw(tmp_path / "raw" / task, task, parquet_bytes(imgs[:10], labels[:10]),
                  parquet_bytes(imgs[10:], labels[10:]))
        info = prepare(task, tmp_path / "raw" / task, tmp_path / "data", image_size=8)
        assert info.head == task and info.classnames == catalog.task_prompts(task)[0]  # own head for fine-tuning
        np.testing.assert_array_equal(load_split(tmp_path / "data", task, "test")[1], labels[10:])
    head = catalog.shared_head("STL10")
    root = str(tmp_path / "data")
    alone = load_benchmark_split([root], ["STL10"], "test")  # 14 tasks: STL10 keeps its own head
    np.testing.assert_array_equal(alone.labels.numpy(), labels[10:])
    both = load_benchmark_split([root, root], ["STL10", "CIFAR10"], "test")
    stl10 = both.labels[both.indices_of(0)].numpy()
    np.testing.assert_array_equal(stl10, np.asarray(head.label_maps["STL10"])[labels[10:]])
    np.testing.assert_array_equal(both.labels[both.indices_of(1)].numpy(), labels[10:])
    assert catalog.benchmark_head("STL10", catalog.BENCHMARKS[14]) is None
    assert catalog.benchmark_head("CIFAR10", catalog.BENCHMARKS[20]) == head
    classnames, templates, name, served = head_prompts(root, "CIFAR10_STL10")
    assert name == "CIFAR10_STL10" and classnames == list(head.classnames) and len(classnames) == 11
    assert head_prompts(root, "STL10")[:2] == catalog.task_prompts("STL10")
