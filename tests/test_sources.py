"""Dataset catalog, parquet loaders, checkpoint fetching and safe unpickling on tiny local files.

Parquet files are written the way the hub stores them (image column = {"bytes", "path"} struct,
``datasets`` feature metadata with ClassLabel names); hub downloads go to the 127.0.0.1 server
of ``test_download``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_download import HubServer, hub  # noqa: F401  (fixture)

from mass.data import catalog
from mass.data.prepare import carve, orient, prepare
from mass.data.prepare import main as prepare_main
from mass.data.store import carve_validation, load_info, load_split
from mass.download import LockFile
from mass.encoder import create_clip
from mass.fetch import fetch_dataset, fetch_finetuned, fetch_head, fetch_pretrained, safe_torch_load, state_dict_of
from mass.io import ArtifactError, load_tensors

REPO = Path(__file__).resolve().parents[1]
DIGITS = [str(i) for i in range(10)]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def parquet_bytes(images: np.ndarray, labels: np.ndarray, names: list[str] | None = None, image_col: str = "image",
                  label_col: str = "label", struct: bool = True) -> bytes:
    """A parquet file laid out like the hub's: image struct (or raw bytes) column + int label column."""
    cells = [png(img) for img in images]
    column = (pa.array([{"bytes": c, "path": f"{i}.png"} for i, c in enumerate(cells)],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
              if struct else pa.array(cells, type=pa.binary()))
    table = pa.table({image_col: column, label_col: pa.array(labels, type=pa.int64())})
    if names is not None:
        features = {image_col: {"_type": "Image"}, label_col: {"names": names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_raw(raw: Path, task: str, train: bytes, test: bytes) -> None:
    """What ``fetch dataset`` leaves behind: parquet files plus manifest.json."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "train-00000-of-00001.parquet").write_bytes(train)
    (raw / "test-00000-of-00001.parquet").write_bytes(test)
    manifest = {"task": task, "repo": catalog.SOURCES[task].repo, "revision": "main", "commit": "c" * 40,
                "splits": {"train": ["train-00000-of-00001.parquet"], "test": ["test-00000-of-00001.parquet"]}}
    (raw / "manifest.json").write_text(json.dumps(manifest))


def gray(n: int, seed: int, size: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


# --------------------------------------------------------------------------- catalog


def test_catalog_covers_the_20_tasks_with_consistent_prompts():
    assert catalog.TASKS == catalog.BENCHMARKS[20] and len(set(catalog.TASKS)) == 20
    assert catalog.BENCHMARKS[8] == ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SVHN", "SUN397")
    counts = {"Cars": 196, "DTD": 47, "EuroSAT": 10, "GTSRB": 43, "RESISC45": 45, "SUN397": 397, "OxfordIIITPet": 37,
              "Flowers102": 102, "CIFAR100": 100, "PCAM": 2, "FER2013": 7, "Food101": 101, "RenderedSST2": 2}
    for task in catalog.TASKS:
        classnames, templates = catalog.task_prompts(task)
        assert len(classnames) == counts.get(task, 10) and len(set(classnames)) == len(classnames)
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

    info = prepare("MNIST", raw, tmp_path / "data", image_size=28)
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
    assert not list((tmp_path / "data" / "MNIST").glob(".*"))  # scratch files are gone


def test_prepare_resizes_shortest_side_and_centre_crops(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 30, 40, 3), dtype=np.uint8)
    write_raw(tmp_path / "raw", "STL10", parquet_bytes(rgb[:10], np.arange(10)), parquet_bytes(rgb[10:], np.arange(2)))
    prepare("STL10", tmp_path / "raw", tmp_path / "data", image_size=16)
    images, _ = load_split(tmp_path / "data", "STL10", "test")
    # shortest side 30 -> 16 (so 40 -> 21), then the central 16 x 16
    expected = np.asarray(Image.fromarray(rgb[10]).resize((21, 16), Image.Resampling.BICUBIC))[:, 2:18]
    assert images.shape == (2, 16, 16, 3)
    assert np.abs(images[0].astype(int) - expected.astype(int)).max() <= 1


def test_stl10_labels_are_mapped_onto_the_shared_head(tmp_path):
    imgs = gray(20, 3, size=8)
    labels = np.arange(20) % 10
    write_raw(tmp_path / "raw", "STL10", parquet_bytes(imgs[:10], labels[:10]), parquet_bytes(imgs[10:], labels[10:]))
    info = prepare("STL10", tmp_path / "raw", tmp_path / "data", image_size=8)
    head = catalog.shared_head("STL10")
    _, stored = load_split(tmp_path / "data", "STL10", "test")
    np.testing.assert_array_equal(stored, np.asarray(head.label_maps["STL10"])[labels[10:]])
    assert info.head == "CIFAR10_STL10" and info.classnames == list(head.classnames)
    assert info.templates == list(head.templates)


@pytest.mark.parametrize("orientation", catalog.EMNIST_ORIENTATIONS)
def test_emnist_is_stored_in_the_checkpoints_orientation(tmp_path, orientation):
    train, test = gray(30, 4), gray(5, 5)
    write_raw(tmp_path / "raw", "EMNIST", parquet_bytes(train, np.arange(30) % 10), parquet_bytes(test, np.arange(5)))
    prepare_main(["--task", "EMNIST", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "data"),
                  "--image-size", "28", "--emnist-orientation", orientation, "--threads", "2"])
    images, _ = load_split(tmp_path / "data", "EMNIST", "test")
    expected = test.transpose(0, 2, 1) if orientation == "mnist" else test
    np.testing.assert_array_equal(images[..., 0], expected)


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
    with pytest.raises(ArtifactError, match="different label order"):
        prepare("RenderedSST2", tmp_path / "swapped", tmp_path / "data", image_size=8)
    write_raw(tmp_path / "count", "EuroSAT", parquet_bytes(imgs[:10], np.arange(10) % 9, names[:9]),
              parquet_bytes(imgs[10:], [0, 1]))
    with pytest.raises(ArtifactError, match="9 classes"):
        prepare("EuroSAT", tmp_path / "count", tmp_path / "data", image_size=8)


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


def pickled_head(monkeypatch, path: Path, weight: torch.Tensor) -> None:
    """Pickle a module whose class lives in the task-vector code's ``src.modeling`` (gone at load time)."""
    with monkeypatch.context() as patch:
        module = types.ModuleType("src.modeling")

        class ClassificationHead(torch.nn.Linear):
            def __init__(self, weights: torch.Tensor):
                super().__init__(weights.shape[1], weights.shape[0])
                self.normalize = True
                self.weight = torch.nn.Parameter(weights.clone())
                self.bias = torch.nn.Parameter(torch.zeros_like(self.bias))

        ClassificationHead.__module__ = "src.modeling"
        ClassificationHead.__qualname__ = "ClassificationHead"
        module.ClassificationHead = ClassificationHead
        patch.setitem(sys.modules, "src", types.ModuleType("src"))
        patch.setitem(sys.modules, "src.modeling", module)
        torch.save(ClassificationHead(weight), path)


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


def test_fetch_pretrained_from_file_and_from_hub(hub, tmp_path):  # noqa: F811
    torch.manual_seed(1)
    state = create_clip("mass-tiny-vit").state_dict()
    torch.save(state, tmp_path / "clip.pt")
    out = tmp_path / "pretrained_openai.safetensors"
    fetch_pretrained("mass-tiny-vit", out, from_file=tmp_path / "clip.pt")
    stored = load_tensors(out)
    assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)

    from safetensors.torch import save

    hub.add("test/tiny-clip", "open_clip_model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    out2 = tmp_path / "hub" / "pretrained_openai.safetensors"
    fetch_pretrained("mass-tiny-vit", out2, LockFile(tmp_path / "lock.json"), repo="test/tiny-clip",
                     endpoint=hub.url, cache_dir=str(tmp_path / "hf-cache"), retries=0)
    assert all(torch.equal(load_tensors(out2)[k], state[k]) for k in state)
    assert sorted(p.name for p in out2.parent.iterdir()) == ["pretrained_openai.safetensors"]
