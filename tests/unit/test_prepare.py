"""Preparation of downloaded parquet files into stored splits: resizing, orientation, columns, label order,
the loader (parquet files written the way the hub stores them, tests/support/parquet.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from support.hub import COMMIT
from support.hub_files import commit_of, dataset_repo
from support.parquet import DIGITS, gray, mnist_on_hub, parquet_bytes, write_raw

from mass.data.store import carve_validation, load_info, load_split, make_loader, save_split
from mass.io import ArtifactError
from mass.training import set_threads
from mass_pipeline.data import catalog
from mass_pipeline.data.prepare import check_orientation, orient, prepare
from mass_pipeline.sources.download import LockFile
from mass_pipeline.sources.fetch import (
    fetch_dataset,
)
from mass_pipeline.steps.prepare_dataset import main as prepare_main


def test_emnist_orientation_is_a_transpose():
    array = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    image = Image.fromarray(array)
    np.testing.assert_array_equal(np.asarray(orient(image, "torchvision", "mnist")), array.T)
    np.testing.assert_array_equal(np.asarray(orient(image, "torchvision", "torchvision")), array)


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


def test_emnist_letters_download_and_prepare_keep_the_hub_copys_letters_as_they_lie(hub, tmp_path):  # noqa: F811
    """EMNISTLetters from its real layout (tests/fixtures/sources/EMNISTLetters.json, served by the rehearsal's
    generator): the letters A-Z of the hub's ClassLabel in their order, and the images as stored, whatever
    orientation the paper's EMNIST checkpoint wants (FusionBench fine-tuned on them as the hub holds them)."""
    repo, ref, files, assumed = dataset_repo("EMNISTLetters", n_train=30, n_test=26)
    assert not assumed  # every fact the generator needs is in the fixture
    for name, data in files.items():
        hub.add(repo, name, data, commit=commit_of(repo, ref), branch=ref)
    raw = tmp_path / "raw" / "EMNISTLetters"
    manifest = fetch_dataset("EMNISTLetters", raw, LockFile(tmp_path / "lock.json"), endpoint=hub.url, retries=0)
    assert manifest["splits"] == {"train": ["emnist-letters/train-00000-of-00001.parquet"],
                                  "test": ["emnist-letters/test-00000-of-00001.parquet"]}
    info = prepare("EMNISTLetters", raw, tmp_path / "data", image_size=28, emnist_orientation="mnist")
    images, labels = load_split(tmp_path / "data", "EMNISTLetters", "test")
    assert info.classnames == [chr(ord("A") + i) for i in range(26)] and labels.tolist() == list(range(26))
    cells = pq.read_table(raw / manifest["splits"]["test"][0]).column("image").to_pylist()
    hub_images = np.stack([np.asarray(Image.open(io.BytesIO(cell["bytes"]))) for cell in cells])
    np.testing.assert_array_equal(images[..., 0], hub_images)
    assert hub_images[1].std() > 0 and not np.array_equal(hub_images[1], hub_images[1].T)  # a transpose would show
    assert not any("orientation" in note or note.startswith("val has") for note in info.notes)
    assert info.split_sizes["val"] == 3 and hub.misses() == []


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
                  "--image-size", "28", "--emnist-orientation", orientation, "--threads", "2", "--edition", "first"])
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
    """Readers ahead of a GPU, from the rule's threads; none where the CPU computes on all of them."""
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    save_split(tmp_path, "T", "test", images, np.arange(10))
    stored, _ = load_split(tmp_path, "T", "test")  # memory-mapped
    previous = torch.get_num_threads()
    try:
        set_threads(3)  # what a rule with threads: 3 does first
        loader = make_loader(stored, batch_size=4, device="cuda")
        assert loader.num_workers == 2
        assert make_loader(stored, batch_size=8, device="cuda").num_workers == 1  # one batch left to read ahead
        assert list(make_loader(stored[:0], device="cuda")) == []  # nothing to read: no reader
        assert make_loader(stored, batch_size=4).num_workers == 0  # CPU: torch computes on the 3 threads
        batches = list(loader)
        set_threads(1)
        assert make_loader(stored, device="cuda").num_workers == 0
    finally:
        torch.set_num_threads(previous)
    assert [len(b) for b in batches] == [4, 4, 2] and batches[0].dtype == torch.uint8
    np.testing.assert_array_equal(torch.cat(batches).numpy(), images)
