"""Artifacts carry a sha256 written with them and checked when read (issue 20, item 1); a killed
write's hidden ``.part`` file is removed by the next write of its target (item 9); artifacts get the
umask's permissions (item 10)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mass.data.store import load_split, save_split
from mass.forward import FirstPassResult, RoutingFeatures
from mass.io import (
    ArtifactError,
    atomic_path,
    checksum_path,
    load_tensors,
    main,
    read_json,
    save_arrays,
    save_tensors,
    write_json,
)
from mass.svd import LowRank, TaskComponents, load_components
from mass_pipeline.results import MethodResult, read_csv
from mass_pipeline.steps.use_published_head import main as use_published_head

FIX = "delete it and rerun the rule that makes it"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def svd_cache(path, seed=0, metadata=None):
    """A TaskComponents file of ~1 MB, like one task's SVD cache."""
    g = torch.Generator().manual_seed(seed)
    matrices = {f"blocks.{i}.mlp.c_fc.weight": LowRank(torch.randn(256, 16, generator=g), torch.rand(16, generator=g),
                                                       torch.randn(64, 16, generator=g)) for i in range(24)}
    comps = TaskComponents(matrices, {"ln_post.weight": torch.randn(64, generator=g)})
    comps.save(path, {"rank_fraction": "0.25", **(metadata or {})})
    return comps


def zero_block(path, size=64 * 1024):
    """Overwrite ``size`` bytes in the middle of a file with zeros, keeping its size (a bad sector)."""
    total = path.stat().st_size
    offset = max((total - size) // 2, 0)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * min(size, total - offset))
    assert path.stat().st_size == total


def test_zeroed_block_in_svd_cache_is_refused(tmp_path):
    path = tmp_path / "svd" / "Cars.safetensors"
    comps = svd_cache(path)
    loaded = TaskComponents.load(path)
    assert torch.equal(loaded.matrices["blocks.3.mlp.c_fc.weight"].U, comps.matrices["blocks.3.mlp.c_fc.weight"].U)
    zero_block(path)
    with pytest.raises(ArtifactError, match=rf"{path}.*{FIX}"):
        TaskComponents.load(path)


def _first_pass(path):
    save_arrays(path, features=np.ones((40, 8), np.float32), task=np.arange(40) % 2, labels=np.arange(40) % 5,
                **{f"res:{b}.mlp.in.cls": np.full((40, 2), b, np.float32) for b in range(12)})
    return FirstPassResult.load


def _z_l(path):
    save_arrays(path, layer=np.array("3.mlp.in"), token=np.array("cls"), z_val=np.ones((30, 64), np.float32),
                z_test=np.ones((30, 64), np.float32), task_val=np.zeros(30, np.int64), task_test=np.zeros(30, np.int64))
    return RoutingFeatures.load


def _method_result(path):
    MethodResult(method="mass_proj", test={"Cars": 0.5, "DTD": 0.25}, val={"Cars": 0.5}).save(path)
    return MethodResult.load


def _merge(path):
    save_tensors(path, {"w": torch.ones(200, 200)}, {"epsilon": "0.3"})
    return load_tensors


def _sweep(path):
    with atomic_path(path) as tmp:
        tmp.write_text("layer,block,accuracy\n" + "".join(f"{b}.mlp.in,{b},0.5\n" for b in range(12)))
    return read_csv


def _split(path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8)
    save_split(path.parent.parent, "digits", "test", images, np.arange(50))
    return lambda p: load_split(path.parent.parent, "digits", "test")


ARTIFACTS = {"first_pass": (_first_pass, "first_pass/eps0.3_val.npz"), "z_l": (_z_l, "routing_features/selected.npz"),
             "method_result": (_method_result, "methods/mass_proj.json"),
             "merge": (_merge, "merge/eps0.3.safetensors"), "sweep": (_sweep, "sweep/selected_val.csv"),
             "prepared_split": (_split, "digits/test_images.npy")}


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_every_artifact_kind_round_trips_and_refuses_a_changed_byte(tmp_path, kind):
    write, name = ARTIFACTS[kind]
    path = tmp_path / name
    read = write(path)
    read(path)  # unchanged: reads
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01  # one flipped bit, size unchanged
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{path.name}.*{FIX}"):
        read(path)


def test_changed_number_in_a_method_result_is_refused(tmp_path):
    """Still valid JSON, another accuracy: only the checksum tells."""
    path = tmp_path / "mass_proj.json"
    write_json(path, {"test": {"Cars": 0.5}})
    path.write_text(path.read_text().replace("0.5", "0.9"))
    with pytest.raises(ArtifactError, match="does not match the sha256 recorded"):
        read_json(path)


def test_checksum_file_is_sha256sum_format(tmp_path):
    path = tmp_path / "eps0.3.json"
    write_json(path, {"epsilon": 0.3})
    sidecar = checksum_path(path)
    assert sidecar.name == ".eps0.3.json.sha256"
    assert "written by" in sidecar.read_text()
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", sidecar.name], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0 and "eps0.3.json: OK" in check.stdout


def test_artifact_copied_without_its_checksum_is_refused_until_recorded(tmp_path, capsys):
    """Issue 31 item 1: an SVD cache copied without its hidden sidecar (``cp dir/*``) and then corrupted was
    read unverified and changed Table 2, and ``verify`` counted 0 bad. Now the reader refuses it with the
    two fixes, ``verify`` reports it, and ``record`` (a file the user vouches for) makes it readable."""
    source, copy = tmp_path / "svd" / "A.safetensors", tmp_path / "copy" / "A.safetensors"
    svd_cache(source)
    copy.parent.mkdir()
    shutil.copyfile(source, copy)  # what `cp svd/* copy/` does: the dot file stays behind
    zero_block(copy)
    with pytest.raises(ArtifactError, match="has no recorded sha256") as err:
        load_components([copy])
    assert str(copy) in str(err.value) and "cp -a" in str(err.value) and "python -m mass.io record" in str(err.value)
    assert main(["verify", str(tmp_path / "copy")]) == 1
    out = capsys.readouterr().out
    assert f"BAD {copy}" in out and "no recorded sha256" in out and "1 files checked, 1 bad" in out
    plain = tmp_path / "copy" / "B.json"
    plain.write_text(json.dumps({"a": 1}))  # placed by hand and vouched for
    assert main(["record", str(plain)]) == 0 and read_json(plain) == {"a": 1}
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "job.log").write_text("a log is not an artifact")
    assert main(["verify", str(tmp_path / "logs")]) == 0 and "0 files checked, 0 bad" in capsys.readouterr().out


def test_another_tasks_file_copied_over_with_its_checksum_is_refused(tiny_clip, tmp_path):
    """Issue 31 item 2: one task's SVD cache copied with its sidecar over another's passed verify and
    sha256sum -c, and 8-task MASS silently dropped. The cache now records the task of the fine-tuned encoder
    it decomposes (svd_cache), and the readers given the benchmark's tasks refuse a file of another task."""
    from support.synthetic import perturbed_encoders

    from mass.io import read_metadata, save_tensors
    from mass.task_vectors import TaskVectorFiles

    pre, fts = perturbed_encoders(tiny_clip, 2)
    save_tensors(tmp_path / "pre.safetensors", pre)
    for task, ft in zip(("A", "B"), fts, strict=True):
        save_tensors(tmp_path / f"ft_{task}.safetensors", ft, {"task": task, "source": "test"})
        subprocess.run([sys.executable, "-m", "mass_pipeline.steps.svd_cache",
                        "--pretrained", str(tmp_path / "pre.safetensors"),
                        "--finetuned", str(tmp_path / f"ft_{task}.safetensors"), "--rank-fraction", "0.5",
                        "--storage-dtype", "float32", "--attention", "in_proj", "--out",
                        str(tmp_path / "svd" / f"{task}.safetensors"), "--threads", "1"], check=True, timeout=300)
    svd = {t: tmp_path / "svd" / f"{t}.safetensors" for t in "AB"}
    assert read_metadata(svd["B"])["task"] == "B"
    assert len(load_components(list(svd.values()), tasks=["A", "B"])) == 2
    for path in (svd["B"], tmp_path / "ft_B.safetensors"):  # what `cp -a A... B...` with the sidecar does
        source = path.with_name(path.name.replace("B", "A"))
        shutil.copyfile(source, path)
        shutil.copyfile(checksum_path(source), checksum_path(path))
    assert main(["verify", str(tmp_path / "svd")]) == 0  # every checksum matches: only the task tells
    with pytest.raises(ArtifactError, match="holds task 'A', not 'B'") as err:
        load_components(list(svd.values()), tasks=["A", "B"])
    assert str(svd["B"]) in str(err.value)
    with pytest.raises(ArtifactError, match="holds task 'A', not 'B'"):
        TaskVectorFiles(pre, [tmp_path / "ft_A.safetensors", tmp_path / "ft_B.safetensors"], ["A", "B"])


def _copy_over(source: Path, target: Path) -> None:
    """What `cp -a` of one task's file over another's does: the file and its checksum file."""
    shutil.copyfile(source, target)
    shutil.copyfile(checksum_path(source), checksum_path(target))


def test_another_tasks_head_split_or_backbones_file_is_refused(tmp_path):
    """Issue 31 item 2, the rest: heads record the tasks they serve and their architecture (ViT-B/32 and
    ViT-B/16 heads, and SVD caches, have the same shapes), split files record task and split in their
    checksum file (.npy has no metadata), info.json names its task. Each swap below passes verify."""
    from mass.data.store import TaskInfo, load_info, save_info
    from mass.heads import load_heads

    heads = tmp_path / "heads"
    for name, served in (("A", "A"), ("B", "B"), ("CIFAR10_STL10", "CIFAR10,STL10")):
        save_tensors(heads / f"{name}.safetensors", {"weight": torch.randn(3, 4)},
                     {"task": name, "tasks": served, "head": name, "model": "ViT-B-32-quickgelu"})
    shared = str(heads / "CIFAR10_STL10.safetensors")
    _, names = load_heads([str(heads / "A.safetensors"), shared, shared], ["A", "CIFAR10", "STL10"], "ViT-B-32")
    assert names == ["A", "CIFAR10_STL10", "CIFAR10_STL10"]  # -quickgelu holds the same weights as its base
    with pytest.raises(ArtifactError, match="is the head of CIFAR10,STL10, not of 'A'"):
        load_heads([shared], ["A"])
    with pytest.raises(ArtifactError, match="holds model 'ViT-B-32-quickgelu', not 'ViT-B-16-quickgelu'"):
        load_heads([str(heads / "A.safetensors")], ["A"], "ViT-B-16-quickgelu")
    _copy_over(heads / "A.safetensors", heads / "B.safetensors")
    assert main(["verify", str(heads)]) == 0
    with pytest.raises(ArtifactError, match="B.safetensors is the head of A, not of 'B'"):
        load_heads([str(heads / "A.safetensors"), str(heads / "B.safetensors")], ["A", "B"])

    rng = np.random.default_rng(0)
    for task in ("A", "B"):
        for split in ("val", "test"):
            save_split(tmp_path, task, split, rng.integers(0, 255, (2, 4, 4, 3), dtype=np.uint8), np.arange(2))
        save_info(tmp_path, TaskInfo(task, ["x", "y"], ["{c}"]))
    check = subprocess.run(["sha256sum", "-c", checksum_path(tmp_path / "A" / "val_images.npy").name],
                           cwd=tmp_path / "A", capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == "val_images.npy: OK\n"  # the holds line is a comment
    _copy_over(tmp_path / "A" / "test_images.npy", tmp_path / "B" / "test_images.npy")
    _copy_over(tmp_path / "B" / "val_labels.npy", tmp_path / "B" / "test_labels.npy")
    _copy_over(tmp_path / "A" / "info.json", tmp_path / "B" / "info.json")
    assert main(["verify", str(tmp_path / "B")]) == 0
    with pytest.raises(ArtifactError, match="test_images.npy holds task 'A', not 'B'"):
        load_split(tmp_path, "B", "test")
    _copy_over(tmp_path / "B" / "val_images.npy", tmp_path / "B" / "test_images.npy")
    with pytest.raises(ArtifactError, match="test_images.npy holds split 'val', not 'test'"):
        load_split(tmp_path, "B", "test")
    assert load_split(tmp_path, "A", "test")[1].tolist() == [0, 1]
    with pytest.raises(ArtifactError, match="B/info.json describes task 'A', not 'B'"):
        load_info(tmp_path, "B")

    cache = tmp_path / "svd" / "A.safetensors"
    svd_cache(cache, metadata={"task": "A", "model": "ViT-B-16"})
    with pytest.raises(ArtifactError, match="holds model 'ViT-B-16', not 'ViT-B-32-quickgelu'"):
        load_components([str(cache)], tasks=["A"], model="ViT-B-32-quickgelu")
    assert len(load_components([str(cache)], tasks=["A"], model="ViT-B-16-quickgelu")) == 1


def test_rewrite_replaces_the_checksum(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert read_json(path) == {"a": 2}


def test_verify_command_finds_and_deletes_corrupt_files(tmp_path, capsys):
    good, bad = tmp_path / "svd" / "A.safetensors", tmp_path / "svd" / "B.safetensors"
    svd_cache(good)
    svd_cache(bad, seed=1)
    zero_block(bad)
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {bad}" in out and str(good) not in out and "2 files checked, 1 bad" in out
    assert main(["verify", "--delete", str(tmp_path)]) == 0
    assert good.exists() and not bad.exists() and not checksum_path(bad).exists()
    assert main(["verify", str(tmp_path)]) == 0


def test_use_published_head_keeps_the_checksum_and_refuses_a_corrupt_source(tmp_path):
    """use_published_head copies a stored head this way: the copy is checked like any artifact."""
    source, target = tmp_path / "published" / "A.safetensors", tmp_path / "heads" / "A.safetensors"
    svd_cache(source)
    use_published_head(["--published", str(source), "--out", str(target)])
    assert checksum_path(target).exists() and load_tensors(target).keys() == load_tensors(source).keys()
    zero_block(source)
    with pytest.raises(ArtifactError, match="A.safetensors"):
        use_published_head(["--published", str(source), "--out", str(tmp_path / "heads" / "B.safetensors")])
    assert not (tmp_path / "heads" / "B.safetensors").exists()


# --- item 9: stale .part files of killed writes -------------------------------------------------

def test_next_write_removes_stale_part_files_of_its_target(tmp_path):
    target = tmp_path / "eps0.3.safetensors"
    stale = [tmp_path / f".eps0.3.safetensors.{s}.part" for s in ("k2fa9x0q", "abcd1234")]
    other = tmp_path / ".eps0.9.safetensors.abcd1234.part"  # another target's: left alone
    for part in (*stale, other):
        part.write_bytes(b"x" * 100)
    save_tensors(target, {"w": torch.ones(3)})
    assert not any(p.exists() for p in stale) and other.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == [other.name]


def test_failed_write_leaves_no_part_and_no_output(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


# --- item 10: permissions from the umask -------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_artifacts_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        save_tensors(tmp_path / "b.safetensors", {"w": torch.ones(2)})
        save_split(tmp_path, "digits", "test", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2))
    finally:
        os.umask(old)
    files = [tmp_path / "a.json", tmp_path / "b.safetensors", tmp_path / "digits/test_images.npy",
             checksum_path(tmp_path / "a.json")]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_same_tensors_and_metadata_give_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its metadata in a per-process hash order; save_tensors sorts it (issue 31 item 9).
    Each save runs in a process of its own, as two runs of a rule do."""
    script = ("import sys, torch; from mass.io import save_tensors; save_tensors(sys.argv[1], {'b': torch.ones(3), "
              "'a': torch.arange(4.0)}, {k: str(i) for i, k in enumerate(['task', 'epsilon', 'attention', "
              "'storage_dtype', 'rank_fraction', 'backbone', 'source', 'seed'])})")
    paths = [tmp_path / f"run{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env={**os.environ, "PYTHONPATH": SRC})
    assert len({path.read_bytes() for path in paths}) == 1
    assert len({checksum_path(path).read_text().split()[0] for path in paths}) == 1
    assert load_tensors(paths[0])["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with safe_open(str(paths[0]), framework="pt") as fh:
        assert fh.metadata() == {k: str(i) for i, k in enumerate(["task", "epsilon", "attention", "storage_dtype",
                                                                  "rank_fraction", "backbone", "source", "seed"])}
