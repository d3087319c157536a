"""Your own tasks (config key ``tasks``): image folders, CSV files and hub datasets (downloaded from the 127.0.0.1
hub) stored as the catalog's tasks are, and one clear message for every bad declaration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from support.hub import COMMIT, FAST
from support.parquet import parquet_bytes
from support.workflow import planned_commands

from mass.data.store import load_info, load_split
from mass.io import ArtifactError
from mass_pipeline.data.own_tasks import DEFAULT_TEMPLATES, OwnTask, prepare_own
from mass_pipeline.sources.download import FileRecord, LockFile
from mass_pipeline.sources.fetch import fetch_declared_dataset
from mass_pipeline.steps import download_own_task, prepare_own_task, prepare_own_train_split

CLASSES = {"oak": (200, 30, 30), "pine": (30, 200, 30), "birch": (30, 30, 200)}


def image(path, colour, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)
    return path


def image_folder(root, per_class=(("train", 20), ("test", 3))):
    """train/<class>/*.png and test/<class>/*.png, each class one flat colour (its label is visible)."""
    for split, n in dict(per_class).items():
        for name, colour in CLASSES.items():
            for i in range(n):
                image(root / split / name / f"{i:02d}.png", colour, size=(40 + i, 30))
    return root


def stored_colour(images):
    """The mean colour of each stored image, rounded to the nearest of CLASSES'."""
    names = sorted(CLASSES)
    colours = np.array([CLASSES[n] for n in names], dtype=float)
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    return [names[int(np.argmin(((colours - m) ** 2).sum(axis=1)))] for m in means]


def test_image_folder_is_stored_with_its_classes_carve_and_pixels(tmp_path):
    task = OwnTask.from_config("Trees", {"folder": str(image_folder(tmp_path / "trees"))})
    info = prepare_own(task, tmp_path / "data", image_size=16, splits=["train", "val", "test"])
    assert info.classnames == ["birch", "oak", "pine"] and info.templates == list(DEFAULT_TEMPLATES)
    # the <X>Val carve of 60 train images: 6 for validation, the other 54 for train
    assert info.split_sizes == {"train": 54, "val": 6, "test": 9}
    assert info.source_image_sizes == [[40, 30], [59, 30]]
    for split, count in info.split_sizes.items():
        images, labels = load_split(tmp_path / "data", "Trees", split)
        assert images.shape == (count, 16, 16, 3) and images.dtype == np.uint8
        assert stored_colour(np.asarray(images)) == [info.classnames[y] for y in labels]  # each label on its image
    _, test_labels = load_split(tmp_path / "data", "Trees", "test")
    assert test_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert load_info(tmp_path / "data", "Trees").notes[0].startswith("source: your files (tasks.Trees.folder")


def test_csv_with_names_or_indices_and_classnames_and_templates(tmp_path):
    root = image_folder(tmp_path / "trees")
    rows = {split: [(p.relative_to(root), p.parent.name) for p in sorted((root / split).rglob("*.png"))]
            for split in ("train", "test")}
    for split, pairs in rows.items():
        (root / f"{split}.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in pairs))
    by_name = prepare_own(OwnTask.from_config("A", {"csv": {"train": str(root / "train.csv"),
                                                             "test": str(root / "test.csv")}}), tmp_path / "data", 16)
    order = ["pine", "oak", "birch"]
    for split, pairs in rows.items():  # absolute paths and label indices into the given class names
        (root / f"{split}_idx.csv").write_text("label,path\n" + "".join(f"{order.index(c)},{root / p}\n"
                                                                        for p, c in pairs))
    by_index = prepare_own(OwnTask.from_config("B", {
        "csv": {"train": str(root / "train_idx.csv"), "test": str(root / "test_idx.csv")},
        "classnames": order, "templates": ["a {c} tree.", "bark of a {c}."], "val_size": 9}), tmp_path / "data", 16)
    assert by_name.classnames == ["birch", "oak", "pine"] and by_index.classnames == order
    assert by_index.templates == ["a {c} tree.", "bark of a {c}."] and by_index.split_sizes["val"] == 9
    for name, info in (("A", by_name), ("B", by_index)):
        images, labels = load_split(tmp_path / "data", name, "test")
        assert stored_colour(np.asarray(images)) == [info.classnames[y] for y in labels]


def test_steps_write_val_test_and_train_apart(tmp_path):
    root = image_folder(tmp_path / "trees")
    common = ["--task", "Trees", "--folder", str(root), "--out", str(tmp_path / "data"), "--image-size", "16",
              "--threads", "2", "--templates", "a {c}."]
    prepare_own_task.main(common)
    assert sorted(p.name for p in (tmp_path / "data" / "Trees").glob("*.npy")) == [
        "test_images.npy", "test_labels.npy", "val_images.npy", "val_labels.npy"]
    assert json.loads((tmp_path / "data" / "Trees" / "info.json").read_text())["templates"] == ["a {c}."]
    prepare_own_train_split.main(common)
    assert len(load_split(tmp_path / "data", "Trees", "train")[1]) == 54


def _csv(tmp_path, text):
    path = tmp_path / "split.csv"
    path.write_text(text)
    return {"csv": {"train": str(path), "test": str(path)}}


@pytest.mark.parametrize("case,expected", [
    ("no_folder", "is not a folder; tasks.T.folder must hold train/ and test/"),
    ("no_test", "test is not a folder"),
    ("empty_class", "no images for class 'oak'"),
    ("stray_folder", "has folders ['maple'] that are not among tasks.T.classnames"),
    ("unreadable", "cannot read image"),
    ("missing_image", "does not exist; fix its path in the task's CSV"),
    ("bad_label", "line 3 has label 'elm', not one of the 3 classes"),
    ("no_column", "it needs the columns path and label"),
    ("numbers", "labels are numbers; give the class names in tasks.T.classnames"),
    ("tiny", "leave no validation images"),
])
def test_bad_declarations_stop_with_one_message_naming_the_task_and_the_file(tmp_path, case, expected):
    root = tmp_path / "trees"
    block = {"folder": str(root)}
    if case != "no_folder":
        image_folder(root, (("train", 20),) if case == "no_test" else (("train", 20), ("test", 3)))
    if case == "empty_class":
        for p in (root / "test" / "oak").iterdir():
            p.unlink()
    elif case == "stray_folder":
        image(root / "train" / "maple" / "0.png", (1, 2, 3))
        block["classnames"] = sorted(CLASSES)
    elif case == "unreadable":
        (root / "test" / "oak" / "01.png").write_bytes(b"not a png")
    elif case == "missing_image":
        block = _csv(tmp_path, f"path,label\n{root / 'train/oak/00.png'},oak\n{root / 'gone.png'},pine\n")
        block["val_size"] = 1
    elif case == "bad_label":
        block = _csv(tmp_path, f"path,label\n{root / 'train/oak/00.png'},oak\n{root / 'train/oak/01.png'},elm\n")
        block["classnames"] = sorted(CLASSES)
    elif case == "no_column":
        block = _csv(tmp_path, "file,label\na.png,oak\n")
    elif case == "numbers":
        block = _csv(tmp_path, f"path,label\n{root / 'train/oak/00.png'},0\n")
    elif case == "tiny":
        block = _csv(tmp_path, "".join(["path,label\n"] + [f"{root / 'train' / c / '00.png'},{c}\n" for c in CLASSES]))
    with pytest.raises(ArtifactError, match="task T: ") as err:
        prepare_own(OwnTask.from_config("T", block), tmp_path / "data", 16)
    assert expected in str(err.value)
    assert not (tmp_path / "data" / "T" / "info.json").exists()


# --- a hub dataset at a pinned commit (tasks.<name>.hub) ---

# the hub's class order (ClassLabel names in the parquet metadata), not sorted: the stored labels must follow it
HUB_NAMES = ["pine", "oak", "birch"]


def coloured(labels, names=HUB_NAMES, size=(6, 9)):
    """Tiny images, each the flat colour of its class (label i is names[i]), so a stored label is visible."""
    return np.stack([np.full((*size, 3), CLASSES[names[y]], dtype=np.uint8) for y in labels])


def hub_split(hub, repo, name, labels, names=HUB_NAMES, folder="data", **columns):
    """One split of a hub dataset as ``datasets`` uploads it: <folder>/<split>-00000-of-00001.parquet."""
    data = parquet_bytes(coloured(labels), np.asarray(labels), names, **columns)
    hub.add(f"datasets/{repo}", f"{folder}/{name}-00000-of-00001.parquet", data, commit=COMMIT)
    return data


def hub_block(repo="org/trees", **overrides):
    """A hub declaration as Snakemake hands it on: the schema's defaults filled in."""
    return {"repo": repo, "revision": COMMIT, "splits": {"train": "train", "test": "test"}, "image_column": "image",
            "label_column": "label", **overrides}


def test_hub_dataset_is_downloaded_pinned_and_stored_with_the_classes_of_its_metadata(hub, tmp_path):
    """Through the steps the rules run: the declared splits and columns, every file pinned with its sha256, the
    class names and their order from the datasets library's metadata."""
    train_labels, test_labels = np.arange(30) % 3, np.array([2, 0, 1, 1, 0, 2])
    train = hub_split(hub, "org/trees", "train", train_labels, image_col="img", label_col="tree")
    test = hub_split(hub, "org/trees", "validation", test_labels, image_col="img", label_col="tree")
    hub_split(hub, "org/trees", "test", [0], image_col="img", label_col="tree")  # not the split declared as test
    raw, lock = tmp_path / "raw" / "Trees", tmp_path / "sources.lock.json"
    dataset = ["--hub", "org/trees", "--revision", COMMIT, "--train-split", "train", "--test-split", "validation",
               "--image-column", "img", "--label-column", "tree"]
    download_own_task.main(["--task", "Trees", *dataset, "--out", str(raw), "--lock", str(lock),
                            "--endpoint", hub.url, "--retries", "0"])
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["splits"] == {"train": ["data/train-00000-of-00001.parquet"],
                                  "test": ["data/validation-00000-of-00001.parquet"]}
    assert (manifest["repo"], manifest["commit"]) == ("org/trees", COMMIT)
    pinned = LockFile(lock)
    for name, data in (("train", train), ("validation", test)):
        key = f"hf://datasets/org/trees@{COMMIT}/data/{name}-00000-of-00001.parquet"
        assert pinned.file(key) == FileRecord(len(data), hub.sha256("datasets/org/trees", COMMIT,
                                                                    f"data/{name}-00000-of-00001.parquet"))
    common = ["--task", "Trees", *dataset, "--raw", str(raw), "--out", str(tmp_path / "data"), "--image-size", "8",
              "--threads", "2"]
    prepare_own_task.main(common)
    prepare_own_train_split.main(common)
    info = load_info(tmp_path / "data", "Trees")
    assert info.classnames == HUB_NAMES and info.split_sizes == {"train": 27, "val": 3, "test": 6}
    assert info.source_image_sizes == [[9, 6], [9, 6]]
    assert f"hub dataset org/trees at commit {COMMIT} (tasks.Trees.hub" in info.notes[0]
    assert "data/validation-00000-of-00001.parquet" in info.notes[0]
    for split in ("train", "val", "test"):
        images, labels = load_split(tmp_path / "data", "Trees", split)
        assert images.shape[1:] == (8, 8, 3)
        assert stored_colour(np.asarray(images)) == [HUB_NAMES[y] for y in labels]
    assert load_split(tmp_path / "data", "Trees", "test")[1].tolist() == test_labels.tolist()


def test_given_classnames_override_the_hub_metadata_and_are_needed_without_it(hub, tmp_path):
    """Also: a repository with two configurations (folders) of the same splits is read from data_dir."""
    for folder in ("data", "other"):
        hub_split(hub, "org/trees", "train", np.arange(20) % 3, folder=folder)
        hub_split(hub, "org/trees", "test", [0, 1, 2] if folder == "data" else [0], folder=folder)
    hub_split(hub, "org/bare", "train", np.arange(20) % 3, names=None)
    hub_split(hub, "org/bare", "test", [0, 1, 2], names=None)
    lock = LockFile(tmp_path / "lock.json")
    given = OwnTask.from_config("Given", {"hub": hub_block(data_dir="data"),
                                          "classnames": ["Pinus", "Quercus", "Betula"]})
    fetch_declared_dataset(given, tmp_path / "raw" / "Given", lock, endpoint=hub.url, **FAST)
    info = prepare_own(given, tmp_path / "data", 8, raw=tmp_path / "raw" / "Given")
    assert info.classnames == ["Pinus", "Quercus", "Betula"] and info.split_sizes["test"] == 3
    bare = OwnTask.from_config("Bare", {"hub": hub_block("org/bare")})
    fetch_declared_dataset(bare, tmp_path / "raw" / "Bare", lock, endpoint=hub.url, **FAST)
    with pytest.raises(ArtifactError, match=r"task Bare: .*train-00000-of-00001.parquet stores no class names for "
                                            r"column 'label' .*give them in tasks.Bare.classnames"):
        prepare_own(bare, tmp_path / "data", 8, raw=tmp_path / "raw" / "Bare")


@pytest.mark.parametrize("case,expected", [
    ("image_column", "has no column 'img' (its columns: ['image', 'label']); set tasks.T.hub.image_column to the "
                     "column that holds the images"),
    ("label_column", "has no column 'y' (its columns: ['image', 'label']); set tasks.T.hub.label_column"),
    ("split", "org/trees has no parquet files for split 'valid' (parquet files: ['data/test-00000-of-00001.parquet', "
              "'data/train-00000-of-00001.parquet']); set tasks.T.hub.splits.test"),
    ("folders", "split 'train' of org/trees is ambiguous across folders ['data', 'other']; set tasks.T.hub.data_dir"),
    ("classes", "train-00000-of-00001.parquet has label 2, not one of the 2 classes ['pine', 'oak'] (label i is "
                "the i-th); fix tasks.T.classnames or tasks.T.hub.label_column"),
])
def test_bad_hub_declarations_stop_with_one_message_naming_the_task_and_the_key(hub, tmp_path, case, expected):
    """A column or split the dataset does not have, or a split in two folders, stops the download (the files it
    fetched stay pinned: they are the hub's), a label outside the classes the preparation."""
    hub_split(hub, "org/trees", "train", np.arange(20) % 3)
    hub_split(hub, "org/trees", "test", [0, 1])
    if case == "folders":
        hub_split(hub, "org/trees", "train", [0, 1], folder="other")
    block = hub_block(**{"image_column": {"image_column": "img"}, "label_column": {"label_column": "y"},
                         "split": {"splits": {"train": "train", "test": "valid"}}}.get(case, {}))
    task = OwnTask.from_config("T", {"hub": block, "classnames": ["pine", "oak"] if case == "classes" else None})
    raw = tmp_path / "raw"

    def download_and_prepare():
        fetch_declared_dataset(task, raw, LockFile(tmp_path / "lock.json"), endpoint=hub.url, **FAST)
        prepare_own(task, tmp_path / "data", 8, raw=raw)

    with pytest.raises(ArtifactError, match="task T: ") as err:
        download_and_prepare()
    assert expected in str(err.value)
    assert not (raw / "manifest.json").exists() or case == "classes"
    assert not (tmp_path / "data" / "T" / "info.json").exists()


def test_rules_prepare_a_declared_task_fine_tune_it_and_build_its_head_from_text(tmp_path):
    """In the paper configuration, a benchmark of a declared folder task, a declared CSV task, a declared hub
    dataset and a catalog task: the folder and CSV tasks are prepared from their files (no download), the hub
    dataset is downloaded by its own rule at its commit, with the schema's defaults, then prepared as they are;
    all three are fine-tuned here, with heads from text."""
    folder = image_folder(tmp_path / "trees")
    (tmp_path / "train.csv").write_text("path,label\n")
    (tmp_path / "test.csv").write_text("path,label\n")
    overlay = {"tasks": {"Trees": {"folder": str(folder)},
                         "Scans": {"csv": {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")},
                                   "classnames": ["benign", "malignant"], "templates": ["a {c} scan."]},
                         "Birds": {"hub": {"repo": "org/birds", "revision": COMMIT, "splits": {"test": "validation"},
                                           "label_column": "species"}}},
               "benchmarks": {"mine": ["Trees", "Scans", "Birds", "MNIST"]},
               "run": {"backbones": ["ViT-B-32"], "benchmarks": ["mine"]}, "svd": {"rank_fraction": 0.34}}
    work = tmp_path / "work"
    work.mkdir()
    _, lines, _ = planned_commands(work, overlay, ["results/ViT-B-32/mine/methods/mass_proj.json"])
    by_step = {}
    for line in lines:
        by_step.setdefault(line.split()[2].removeprefix("mass_pipeline.steps."), []).append(line)
    def tasks_of(step):
        return {line.split("--task ")[1].split()[0]: line for line in by_step.get(step, [])}

    assert set(tasks_of("download_dataset")) == set(tasks_of("prepare_dataset")) == {"MNIST"}
    dataset = (f"--hub org/birds --revision {COMMIT} --train-split train --test-split validation --image-column image "
               "--label-column species")
    assert tasks_of("download_own_task") == {"Birds": f"python -m mass_pipeline.steps.download_own_task --task Birds "
                                                      f"{dataset} --out resources/raw/Birds --lock "
                                                      "workflow/sources.lock.json > "
                                                      "results/logs/sources/download_own_task/Birds.log 2>&1"}
    prepared = tasks_of("prepare_own_task")
    assert set(prepared) == set(tasks_of("prepare_own_train_split")) == {"Trees", "Scans", "Birds"}
    assert f"--folder {folder} " in prepared["Trees"] and "--out resources/data/hub " in prepared["Trees"]
    assert "--classnames benign malignant" in prepared["Scans"] and "--templates 'a {c} scan.'" in prepared["Scans"]
    assert f"{dataset} --raw resources/raw/Birds --out resources/data/hub " in prepared["Birds"]
    assert set(tasks_of("finetune")) == {"Trees", "Scans", "Birds"}
    assert set(tasks_of("fetch_finetuned")) == set(tasks_of("check_head")) == {"MNIST"}
    built = {line.split("--task ")[1].split()[0] for line in by_step["build_head"] if "/heads/" in line}
    assert {"Trees", "Scans", "Birds"} <= built
    provenance = by_step["check_provenance"][0]
    assert "--trained-here Trees Scans Birds " in provenance

