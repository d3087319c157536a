"""Dataset catalog, parquet loaders, checkpoint fetching and safe unpickling on tiny local files.

Parquet files are written the way the hub stores them (image column = {"bytes", "path"} struct,
``datasets`` feature metadata with ClassLabel names); hub downloads go to the 127.0.0.1 server
of ``test_download``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.hub import COMMIT, pickled_head
from support.parquet import DIGITS, gray, mnist_on_hub, parquet_bytes, write_raw

from mass.data import catalog
from mass.data.benchmark import load_benchmark_split
from mass.data.prepare import carve, check_orientation, orient, prepare
from mass.data.store import carve_validation, load_info, load_split, make_loader, save_split
from mass.encoder import create_clip
from mass.io import ArtifactError, load_tensors, save_tensors
from mass.sources.download import LockFile
from mass.sources.fetch import (
    fetch_dataset,
    fetch_finetuned,
    fetch_head,
    fetch_pretrained,
    safe_torch_load,
    state_dict_of,
)
from mass.steps.build_head import head_prompts
from mass.steps.prepare_dataset import main as prepare_main
from mass.training import set_threads

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- catalog


def test_catalog_covers_the_20_tasks_with_consistent_prompts():
    assert catalog.TASKS == catalog.BENCHMARKS[20] and len(set(catalog.TASKS)) == 20
    assert catalog.BENCHMARKS[8] == ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SVHN", "SUN397")
    counts = {"Cars": 196, "DTD": 47, "EuroSAT": 10, "GTSRB": 43, "RESISC45": 45, "SUN397": 397, "OxfordIIITPet": 37,
              "Flowers102": 102, "CIFAR100": 100, "PCAM": 2, "FER2013": 7, "Food101": 101, "RenderedSST2": 2}
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


def test_emnist_orientation_is_a_transpose():
    array = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    image = Image.fromarray(array)
    np.testing.assert_array_equal(np.asarray(orient(image, "torchvision", "mnist")), array.T)
    np.testing.assert_array_equal(np.asarray(orient(image, "torchvision", "torchvision")), array)


# --------------------------------------------------------------------------- download + prepare


def test_mnist_download_and_prepare_end_to_end(hub, tmp_path):  # noqa: F811
    train, test = gray(50, 1), gray(20, 2)
    train_labels, test_labels = np.arange(50) % 10, np.arange(20) % 10
    hub.add("datasets/ylecun/mnist", "mnist/train-00000-of-00001.parquet", parquet_bytes(train, train_labels, DIGITS))
    hub.add("datasets/ylecun/mnist", "mnist/test-00000-of-00001.parquet", parquet_bytes(test, test_labels, DIGITS))
    hub.add("datasets/ylecun/mnist", "README.md", b"# mnist")
    lock = LockFile(tmp_path / "sources.lock.json")
    raw = tmp_path / "raw" / "MNIST"
    manifest = fetch_dataset("MNIST", raw, lock, endpoint=hub.url, retries=0)
    assert manifest["splits"]["test"] == ["mnist/test-00000-of-00001.parquet"]
    assert len(json.loads(lock.path.read_text())["files"]) == 2

    info = prepare("MNIST", raw, tmp_path / "data", image_size=28, splits=("val", "test"))
    assert not (tmp_path / "data" / "MNIST" / "train_images.npy").exists()  # as the pipeline: train apart
    assert prepare("MNIST", raw, tmp_path / "data", image_size=28, splits=("train",)) == info
    train_idx, val_idx = carve_validation(50)
    for split, source, labels, idx in (("train", train, train_labels, train_idx), ("val", train, train_labels, val_idx),
                                       ("test", test, test_labels, np.arange(20))):
        images, stored = load_split(tmp_path / "data", "MNIST", split)
        assert images.shape == (len(idx), 28, 28, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, np.repeat(source[idx][..., None], 3, axis=-1))
        np.testing.assert_array_equal(stored, labels[idx])
    assert load_info(tmp_path / "data", "MNIST") == info
    assert info.classnames == DIGITS and info.head == "MNIST"
    assert any("published checkpoints used 5000" in n for n in info.notes)
    leftovers = [p for p in (tmp_path / "data" / "MNIST").glob(".*") if not p.name.endswith(".sha256")]
    assert not leftovers  # scratch files are gone (the .sha256 files are the artifacts' checksums)


def test_second_dataset_fetch_uses_the_locked_commit(hub, tmp_path):  # noqa: F811
    first = mnist_on_hub(hub, 1)
    lock = LockFile(tmp_path / "sources.lock.json")
    fetch_dataset("MNIST", tmp_path / "raw1", lock, endpoint=hub.url, retries=0)
    mnist_on_hub(hub, 7, commit="e" * 40)  # the dataset's main branch moves on
    manifest = fetch_dataset("MNIST", tmp_path / "raw2", lock, endpoint=hub.url, retries=0)
    assert manifest["commit"] == COMMIT and hub.api_calls() == 1
    assert (tmp_path / "raw2" / "mnist" / "train-00000-of-00001.parquet").read_bytes() == first[0]


def test_dataset_revision_from_config_is_fetched_and_pinned(hub, tmp_path):  # noqa: F811
    old = mnist_on_hub(hub, 1)
    mnist_on_hub(hub, 7, commit="e" * 40)  # main is now the newer commit
    lock = LockFile(tmp_path / "sources.lock.json")
    manifest = fetch_dataset("MNIST", tmp_path / "raw", lock, revision=COMMIT, endpoint=hub.url, retries=0)
    assert manifest["commit"] == COMMIT and manifest["revision"] == COMMIT
    assert lock.revision(f"datasets/ylecun/mnist@{COMMIT}")["commit"] == COMMIT
    assert (tmp_path / "raw" / "mnist" / "test-00000-of-00001.parquet").read_bytes() == old[1]


def test_prepare_resizes_shortest_side_and_centre_crops(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 30, 40, 3), dtype=np.uint8)
    write_raw(tmp_path / "raw", "STL10", parquet_bytes(rgb[:10], np.arange(10)), parquet_bytes(rgb[10:], np.arange(2)))
    prepare("STL10", tmp_path / "raw", tmp_path / "data", image_size=16)
    images, _ = load_split(tmp_path / "data", "STL10", "test")
    # shortest side 30 -> 16 (so 40 -> 21), then the central 16 x 16
    expected = np.asarray(Image.fromarray(rgb[10]).resize((21, 16), Image.Resampling.BICUBIC))[:, 2:18]
    assert images.shape == (2, 16, 16, 3)
    assert np.abs(images[0].astype(int) - expected.astype(int)).max() <= 1


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
    classnames, templates, name = head_prompts(root, "CIFAR10_STL10")
    assert name == "CIFAR10_STL10" and classnames == list(head.classnames) and len(classnames) == 11
    assert head_prompts(root, "STL10")[:2] == catalog.task_prompts("STL10")


def emnist_like(labels: np.ndarray, seed: int) -> np.ndarray:
    """Faint noise, plus a stroke for every digit 1: horizontal, as in the raw (torchvision) EMNIST layout."""
    images = np.random.default_rng(seed).integers(0, 40, (len(labels), 28, 28), dtype=np.uint8)
    images[labels == 1, 12:16, 5:23] = 255
    return images


@pytest.mark.parametrize("orientation", catalog.EMNIST_ORIENTATIONS)
def test_emnist_is_stored_in_the_checkpoints_orientation(tmp_path, orientation):
    train_labels, test_labels = np.arange(30) % 10, np.arange(12) % 10
    test = emnist_like(test_labels, 5)
    write_raw(tmp_path / "raw", "EMNIST", parquet_bytes(emnist_like(train_labels, 4), train_labels),
              parquet_bytes(test, test_labels))
    prepare_main(["--task", "EMNIST", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "data"),
                  "--image-size", "28", "--emnist-orientation", orientation, "--threads", "2"])
    images, _ = load_split(tmp_path / "data", "EMNIST", "test")
    expected = test.transpose(0, 2, 1) if orientation == "mnist" else test
    np.testing.assert_array_equal(images[..., 0], expected)


def test_emnist_source_in_another_orientation_is_refused_before_storing(tmp_path):
    labels = np.arange(30) % 10
    upright = emnist_like(labels, 6).transpose(0, 2, 1)  # a source that is already in MNIST orientation
    write_raw(tmp_path / "raw", "EMNIST", parquet_bytes(upright[:20], labels[:20]),
              parquet_bytes(upright[20:], labels[20:]))
    with pytest.raises(ArtifactError, match="datasets.EMNIST.source_orientation"):
        prepare("EMNIST", tmp_path / "raw", tmp_path / "data", image_size=28, emnist_orientation="mnist")
    assert not (tmp_path / "data" / "EMNIST").exists() or not list((tmp_path / "data" / "EMNIST").iterdir())
    prepare("EMNIST", tmp_path / "raw", tmp_path / "data", image_size=28, emnist_orientation="mnist",
            source_orientation="mnist")
    np.testing.assert_array_equal(load_split(tmp_path / "data", "EMNIST", "test")[0][..., 0], upright[20:])


def test_orientation_check_reads_the_digit_one_stroke():
    labels = np.array([1, 1, 0])
    flat = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    flat[:2, 3:5, 1:7] = 255
    check_orientation("EMNIST", flat, labels, "torchvision")
    check_orientation("EMNIST", flat.transpose(0, 2, 1, 3), labels, "mnist")
    with pytest.raises(ArtifactError, match="wider than it is tall"):
        check_orientation("EMNIST", flat, labels, "mnist")
    with pytest.raises(ArtifactError, match="no images of the digit 1"):
        check_orientation("EMNIST", flat, np.zeros(3, dtype=int), "mnist")


def test_fer2013_reads_its_own_columns_and_raw_bytes(tmp_path):
    imgs = gray(20, 6, size=12)
    write_raw(tmp_path / "raw", "FER2013",
              parquet_bytes(imgs[:14], np.arange(14) % 7, image_col="jpg", label_col="cls", struct=False),
              parquet_bytes(imgs[14:], np.arange(6), image_col="jpg", label_col="cls", struct=False))
    prepare("FER2013", tmp_path / "raw", tmp_path / "data", image_size=12)
    _, labels = load_split(tmp_path / "data", "FER2013", "val")
    assert len(labels) == 1
    write_raw(tmp_path / "bad", "FER2013", parquet_bytes(imgs[:14], np.arange(14) % 7),
              parquet_bytes(imgs[14:], [0] * 6))
    with pytest.raises(ArtifactError, match="no column 'cls'"):
        prepare("FER2013", tmp_path / "bad", tmp_path / "data2", image_size=12)


def test_source_label_order_is_checked(tmp_path):
    imgs = gray(12, 7, size=8)
    names = [c.replace(" ", "_") for c in catalog.task_prompts("EuroSAT")[0]]
    write_raw(tmp_path / "ok", "RenderedSST2", parquet_bytes(imgs[:10], np.arange(10) % 2, ["negative", "positive"]),
              parquet_bytes(imgs[10:], [0, 1]))
    prepare("RenderedSST2", tmp_path / "ok", tmp_path / "data", image_size=8)
    write_raw(tmp_path / "swapped", "RenderedSST2",
              parquet_bytes(imgs[:10], np.arange(10) % 2, ["positive", "negative"]), parquet_bytes(imgs[10:], [0, 1]))
    info = prepare("RenderedSST2", tmp_path / "swapped", tmp_path / "data3", image_size=8)  # mapped by name
    assert load_split(tmp_path / "data3", "RenderedSST2", "test")[1].tolist() == [1, 0]
    assert any("mapped by name" in n for n in info.notes)
    partial = ["positive", "mixed"]  # one name matches, at another index: cannot be mapped safely
    write_raw(tmp_path / "partial", "RenderedSST2", parquet_bytes(imgs[:10], np.arange(10) % 2, partial),
              parquet_bytes(imgs[10:], [0, 1]))
    with pytest.raises(ArtifactError, match="orders its classes differently"):
        prepare("RenderedSST2", tmp_path / "partial", tmp_path / "data4", image_size=8)
    write_raw(tmp_path / "count", "EuroSAT", parquet_bytes(imgs[:10], np.arange(10) % 9, names[:9]),
              parquet_bytes(imgs[10:], [0, 1]))
    with pytest.raises(ArtifactError, match="9 classes"):
        prepare("EuroSAT", tmp_path / "count", tmp_path / "data", image_size=8)


def test_loader_reads_a_stored_split_in_order_with_the_rules_threads(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    save_split(tmp_path, "T", "test", images, np.arange(10))
    stored, _ = load_split(tmp_path, "T", "test")  # memory-mapped
    previous = torch.get_num_threads()
    try:
        set_threads(3)  # what a rule with threads: 3 does first
        loader = make_loader(stored, batch_size=4)
        assert loader.num_workers == 2
        assert make_loader(stored, batch_size=8).num_workers == 1  # one batch left to read ahead
        assert list(make_loader(stored[:0])) == []  # nothing to read: no reader
        batches = list(loader)
        set_threads(1)
        assert make_loader(stored).num_workers == 0
    finally:
        torch.set_num_threads(previous)
    assert [len(b) for b in batches] == [4, 4, 2] and batches[0].dtype == torch.uint8
    np.testing.assert_array_equal(torch.cat(batches).numpy(), images)


# --------------------------------------------------------------------------- safe unpickling


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_forbidden_class_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": Evil(marker)}, path)
    with pytest.raises(ArtifactError, match=r"refusing to load (posix|os|nt)\.system") as err:
        safe_torch_load(path)
    assert str(path) in str(err.value) and not marker.exists()


def test_plain_state_dict_loads(tmp_path):
    state = OrderedDict(weight=torch.randn(3, 4), bias=torch.zeros(3))
    torch.save(state, tmp_path / "sd.pt")
    loaded = state_dict_of(safe_torch_load(tmp_path / "sd.pt"), tmp_path / "sd.pt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_pickled_modules_are_read_without_their_code(tmp_path, monkeypatch):
    linear = torch.nn.Linear(3, 2)
    torch.save(linear, tmp_path / "linear.pt")
    tensors = state_dict_of(safe_torch_load(tmp_path / "linear.pt"), tmp_path / "linear.pt")
    assert torch.equal(tensors["weight"], linear.weight.detach()) and torch.equal(tensors["bias"], linear.bias.detach())
    weight = torch.randn(5, 8)
    pickled_head(monkeypatch, tmp_path / "head.pt", weight)
    assert "src.modeling" not in sys.modules
    assert torch.equal(state_dict_of(safe_torch_load(tmp_path / "head.pt"), tmp_path / "head.pt")["weight"], weight)


# --------------------------------------------------------------------------- checkpoints


def test_fetch_head_and_finetuned_from_the_hub(hub, tmp_path, monkeypatch):  # noqa: F811
    torch.manual_seed(0)
    clip = create_clip("mass-tiny-vit")
    visual = clip.visual.state_dict()
    encoder = OrderedDict((f"model.visual.{k}", v.clone() + 1) for k, v in visual.items())
    encoder["model.token_embedding.weight"] = torch.zeros(4, 4)  # text tower: dropped
    buf = io.BytesIO()
    torch.save(encoder, buf)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/MNISTVal/nonlinear_finetuned.pt", buf.getvalue())
    weight = torch.randn(10, 16)
    pickled_head(monkeypatch, tmp_path / "head.pt", weight)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/head_MNISTVal.pt", (tmp_path / "head.pt").read_bytes())
    lock = LockFile(tmp_path / "lock.json")
    out = tmp_path / "ckpt" / "hub" / "MNIST.safetensors"
    fetch_finetuned("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, lock, endpoint=hub.url, retries=0)
    stored = load_tensors(out)
    assert stored.keys() == visual.keys() and all(torch.equal(stored[k], visual[k] + 1) for k in visual)
    assert not out.with_suffix(".pt").exists()
    head_out = tmp_path / "ckpt" / "hub" / "heads" / "MNIST.safetensors"
    fetch_head("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", head_out, lock, endpoint=hub.url, retries=0)
    assert load_tensors(head_out).keys() == {"weight"} and torch.equal(load_tensors(head_out)["weight"], weight)
    with pytest.raises(ArtifactError, match="not a ViT-B-32 image encoder"):
        fetch_finetuned("ViT-B-32", "MNIST", "nik-dim/tall_masks", tmp_path / "x.safetensors", lock,
                        endpoint=hub.url, hub_model_dir="mass-tiny-vit", retries=0)
    buf = io.BytesIO()
    torch.save(OrderedDict((k, v + 5) for k, v in encoder.items()), buf)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/MNISTVal/nonlinear_finetuned.pt", buf.getvalue(),
            commit="d" * 40)  # a newer commit on main: a rerun keeps the pinned one
    out.unlink()
    fetch_finetuned("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, lock, endpoint=hub.url, retries=0)
    assert all(torch.equal(load_tensors(out)[k], visual[k] + 1) for k in visual)


def test_checkpoint_folder_spelled_differently_is_found_on_every_fetch(hub, tmp_path, monkeypatch):  # noqa: F811
    """The second fetch of a pinned repository (no listing before the fix) still finds VIT-B-16-style folders."""
    torch.manual_seed(0)
    visual = create_clip("mass-tiny-vit").visual.state_dict()
    for task in ("MNIST", "SVHN"):
        buf = io.BytesIO()
        torch.save(OrderedDict((f"model.visual.{k}", v) for k, v in visual.items()), buf)
        hub.add("nik-dim/tall_masks", f"single_task/MASS-TINY-VIT/{task}Val/nonlinear_finetuned.pt", buf.getvalue())
    lock = LockFile(tmp_path / "lock.json")
    for task in ("MNIST", "SVHN"):
        fetch_finetuned("mass-tiny-vit", task, "nik-dim/tall_masks", tmp_path / f"{task}.safetensors", lock,
                        endpoint=hub.url, retries=0)
    assert hub.api_calls() == 1 and (tmp_path / "SVHN.safetensors").exists()
    listing = lock.revision("nik-dim/tall_masks@main")["files"]
    assert "single_task/MASS-TINY-VIT/SVHNVal/nonlinear_finetuned.pt" in listing
    with pytest.raises(ArtifactError, match="no file single_task/mass-tiny-vit/DTDVal"):
        fetch_finetuned("mass-tiny-vit", "DTD", "nik-dim/tall_masks", tmp_path / "DTD.safetensors", lock,
                        endpoint=hub.url, retries=0)


def test_published_head_is_compared_with_the_head_built_from_text(hub, tmp_path, monkeypatch):  # noqa: F811
    weight = torch.nn.functional.normalize(torch.randn(4, 16), dim=1) * 100
    pickled_head(monkeypatch, tmp_path / "head.pt", weight)
    hub.add("nik-dim/tall_masks", "single_task/mass-tiny-vit/head_DTDVal.pt", (tmp_path / "head.pt").read_bytes())
    lock = LockFile(tmp_path / "lock.json")
    built = tmp_path / "built.safetensors"
    fetch = {"model": "mass-tiny-vit", "task": "DTD", "repo": "nik-dim/tall_masks", "lock": lock, "endpoint": hub.url,
             "retries": 0, "compare_with": built}
    save_tensors(built, {"weight": weight + 0.01 * torch.randn(4, 16)})
    fetch_head(out=tmp_path / "published.safetensors", report=tmp_path / "same.json", **fetch)
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["classes"] == 4 and same["min_cosine"] > 0.99 and same["same_order"]
    save_tensors(built, {"weight": weight[[1, 0, 2, 3]]})  # two class names swapped
    fetch_head(out=tmp_path / "published.safetensors", report=tmp_path / "swapped.json", **fetch)
    swapped = json.loads((tmp_path / "swapped.json").read_text())
    assert not swapped["same_order"] and swapped["least_similar_class"] in (0, 1)
    save_tensors(built, {"weight": weight[:3]})
    with pytest.raises(ArtifactError, match=r"published head is \(4, 16\), the pipeline's \(3, 16\)"):
        fetch_head(out=tmp_path / "published.safetensors", report=tmp_path / "bad.json", **fetch)


def test_fetch_pretrained_from_file_and_from_hub(hub, tmp_path):  # noqa: F811
    torch.manual_seed(1)
    state = create_clip("mass-tiny-vit").state_dict()
    torch.save(state, tmp_path / "clip.pt")
    out = tmp_path / "pretrained_openai.safetensors"
    fetch_pretrained("mass-tiny-vit", out, from_file=tmp_path / "clip.pt")
    stored = load_tensors(out)
    assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "openai.pt")  # OpenAI's .pt are TorchScript
    with pytest.raises(ArtifactError, match="TorchScript"):
        fetch_pretrained("mass-tiny-vit", tmp_path / "x.safetensors", from_file=tmp_path / "openai.pt")

    from safetensors.torch import save

    hub.add("test/tiny-clip", "open_clip_model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    out2 = tmp_path / "hub" / "pretrained_openai.safetensors"
    fetch_pretrained("mass-tiny-vit", out2, LockFile(tmp_path / "lock.json"), repo="test/tiny-clip",
                     endpoint=hub.url, cache_dir=str(tmp_path / "hf-cache"), retries=0)
    assert all(torch.equal(load_tensors(out2)[k], state[k]) for k in state)
    assert sorted(p.name for p in out2.parent.iterdir() if not p.name.endswith(".sha256")) == [
        "pretrained_openai.safetensors"]


# --------------------------------------------------------------------------- pipeline rules


def test_rules_pass_config_pins_and_pick_the_shared_head(tmp_path):
    """Dry run of a copy of the workflow (the catalog's data file is then found through the installed package)."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("workflow", "envs"):
        shutil.copytree(REPO / name, tmp_path / name)
    pins = {"datasets": {"MNIST": {"revision": "1" * 40}, "EMNIST": {"source_orientation": "mnist"}},
            "sources": {"finetuned_revision": "2" * 40, "pretrained_revisions": {"ViT-B-32": "3" * 40}}}
    (tmp_path / "pins.yaml").write_text(json.dumps(pins))
    targets = ["resources/raw/MNIST/manifest.json", "resources/data/hub/EMNIST/info.json",
               "resources/checkpoints/ViT-B-32/hub/MNIST.safetensors",
               "resources/checkpoints/ViT-B-32/pretrained_openai.safetensors",
               "results/ViT-B-32/14/methods/tsvm.json", "results/ViT-B-32/20/methods/tsvm.json"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", *targets, "-n", "-p", "--cores", "2",
               "--configfile", "config.yaml", "pins.yaml"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [" ".join(line.removeprefix("Shell command:").split()) for line in run.stdout.splitlines()
             if line.startswith("Shell command: python -m mass.")]
    commands = {line.split()[2].removeprefix("mass.steps."): line for line in lines
                if line.startswith(("python -m mass.steps.fetch_", "python -m mass.steps.check_head"))}
    mnist = (f"download_dataset --task MNIST --out resources/raw/MNIST --lock workflow/sources.lock.json "
             f"--revision {'1' * 40}")
    assert any(mnist in line for line in lines)
    assert f"--revision {'2' * 40}" in commands["fetch_finetuned"]
    assert f"--revision {'3' * 40}" in commands["fetch_pretrained"]
    # theta_pre: the zero-shot encoder of the fine-tuned checkpoints' repository, at the same revision
    assert f"--zeroshot-repo nik-dim/tall_masks --zeroshot-revision {'2' * 40}" in commands["fetch_pretrained"]
    assert "--report results/ViT-B-32/theta_pre.json" in commands["fetch_pretrained"]
    # hub tasks use the published head; check_head compares it with the text-built one
    assert "--compare-with resources/checkpoints/ViT-B-32/built_heads/" in commands["check_head"]
    assert "rule use_published_head:" in run.stdout
    built = {m for line in lines if line.startswith("python -m mass.steps.build_head ")
             for m in re.findall(r"--out resources/checkpoints/ViT-B-32/(\w+/\w+)\.safetensors", line)}
    assert "heads/CIFAR10_STL10" in built and "heads/EMNIST" in built and "heads/Cars" not in built
    assert any("--emnist-orientation mnist --source-orientation mnist" in line for line in lines)
    tsvm = [line for line in lines if line.startswith("python -m mass.steps.evaluate_tsvm")]
    heads = {line.count("/14/") > 0: re.findall(r"heads/(\w+)\.safetensors", line) for line in tsvm}
    assert heads[True][8] == "STL10" and len(heads[True]) == 14
    assert heads[False][8] == heads[False][14] == "CIFAR10_STL10" and len(heads[False]) == 20


def test_download_rules_are_local_rules():
    """Compute nodes may have no internet: every rule that downloads runs where Snakemake runs."""
    rules = re.split(r"^rule ", (REPO / "workflow" / "rules" / "sources.smk").read_text(), flags=re.M)[1:]
    local = {block.split(":", 1)[0]: "localrule: True" in block for block in rules}
    assert local == {"download_dataset": True, "prepare_dataset": True, "prepare_train_split": True,
                     "fetch_pretrained": True, "fetch_finetuned": True, "check_head": True}


# --------------------------------------------------------------------------- published heads and theta_pre


def torch113_head(monkeypatch, path: Path, weight: torch.Tensor, zip_layout: bool) -> None:
    """A head pickled as the task-vector code saved it under torch 1.13: a whole
    ``src.models.modeling.ClassificationHead`` module, in the zip layout or the legacy one."""
    pickled_head(monkeypatch, path, weight, "src.models.modeling", zip_layout)


@pytest.mark.parametrize("zip_layout", [True, False])
def test_published_head_pickled_by_torch_113_is_read_as_tensors_only(hub, tmp_path, monkeypatch,  # noqa: F811
                                                                       zip_layout):
    weight = torch.nn.functional.normalize(torch.randn(10, 16), dim=1) * 100
    torch113_head(monkeypatch, tmp_path / "head.pt", weight, zip_layout)
    assert "src.models.modeling" not in sys.modules
    raw = (tmp_path / "head.pt").read_bytes()
    assert (raw[:2] == b"PK") == zip_layout  # zip archive, or the legacy magic-number layout
    hub.add("nik-dim/tall_masks", "single_task/MASS-TINY-VIT/head_MNISTVal.pt", raw)
    out = tmp_path / "published" / "MNIST.safetensors"
    fetch_head("mass-tiny-vit", "MNIST", "nik-dim/tall_masks", out, LockFile(tmp_path / "lock.json"),
               endpoint=hub.url, retries=0)
    stored = load_tensors(out)
    assert stored.keys() == {"weight"} and torch.equal(stored["weight"], weight)
    assert "src.models.modeling" not in sys.modules and not out.with_suffix(".pt").exists()


def test_theta_pre_is_the_authors_zero_shot_encoder_and_the_difference_is_recorded(hub, tmp_path):  # noqa: F811
    from safetensors.torch import save

    torch.manual_seed(2)
    state = create_clip("mass-tiny-vit").state_dict()
    hub.add("test/tiny-clip", "open_clip_model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    zeroshot = OrderedDict((f"model.{k}", v.clone()) for k, v in state.items() if k.startswith("visual."))
    zeroshot["model.visual.proj"] += 0.25
    zeroshot["model.token_embedding.weight"] = torch.zeros(3, 3)  # text tower of the authors' file: not used
    buf = io.BytesIO()
    torch.save(zeroshot, buf)
    hub.add("nik-dim/tall_masks", "single_task/MASS-TINY-VIT/MNISTVal/nonlinear_zeroshot.pt", buf.getvalue())
    out, report = tmp_path / "pretrained_openai.safetensors", tmp_path / "theta_pre.json"
    fetch_pretrained("mass-tiny-vit", out, LockFile(tmp_path / "lock.json"), repo="test/tiny-clip", endpoint=hub.url,
                     cache_dir=str(tmp_path / "hf-cache"), zeroshot_repo="nik-dim/tall_masks", report=report,
                     retries=0)
    stored = load_tensors(out)
    assert torch.equal(stored["visual.proj"], state["visual.proj"] + 0.25)
    assert all(torch.equal(stored[k], v) for k, v in state.items() if k != "visual.proj")  # text tower: OpenAI's
    result = json.loads(report.read_text())
    assert result["max_abs_difference"] == pytest.approx(0.25) and result["largest_difference_tensor"] == "visual.proj"
    zeroshot_file = "single_task/MASS-TINY-VIT/MNISTVal/nonlinear_zeroshot.pt"
    assert result["theta_pre"] == f"nik-dim/tall_masks/{zeroshot_file}@{COMMIT}"
    assert result["compared_with"].startswith("test/tiny-clip/open_clip_model.safetensors@")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == []  # downloaded .pt removed
