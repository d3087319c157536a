"""TEXTSPAN decoding of task singular vectors: the algorithm on hand-built cases, the mapping into the joint
space, the demo's description pool, the pinned download of the hub pool and the figure's numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from support.tables import hand_written_per_task, plot_options, run_cli, write_csv

from mass.io import save_arrays, write_json
from mass.svd import LowRank, TaskComponents
from mass.task_vectors import LayerId
from mass.textspan import joint_space_directions, singular_vectors, textspan
from mass_pipeline.data.demo import DISTRACTORS, FAMILIES, TASKS, description_pool
from mass_pipeline.sources.descriptions import fetch_descriptions, lock_key, read_descriptions
from mass_pipeline.sources.download import ChecksumMismatch, LockFile
from mass_pipeline.steps import make_plots


def orthonormal(n: int, k: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_textspan_picks_the_directions_that_carry_the_variance_in_order():
    e = 16
    basis = orthonormal(e, 6)                   # unit "text" directions
    texts = [f"text {i}" for i in range(6)]
    coef = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coef = coef - coef.mean(0)
    coef = coef / coef.std(0) * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    data = coef @ basis[:, [4, 1, 2]].T + 5.0 * basis[:, 0]  # a constant offset along text 0: no variance
    picks = textspan(data.float(), basis.T.float(), texts, 3)
    assert [p.text for p in picks] == ["text 4", "text 1", "text 2"]
    assert [p.explained for p in picks] == pytest.approx([9 / 14, 4 / 14, 1 / 14], rel=1e-3)
    assert sum(p.explained for p in picks) == pytest.approx(1.0, rel=1e-4)


def test_textspan_compares_texts_within_the_span_of_the_vectors_only():
    e = 12
    basis = orthonormal(e, 4, seed=2)
    vectors = torch.stack([2.0 * basis[:, 0], -2.0 * basis[:, 0], 0.5 * basis[:, 1], -0.5 * basis[:, 1]])
    outside = basis[:, 3]                        # orthogonal to every vector: explains nothing
    mostly_outside = 0.2 * basis[:, 1] + 0.98 * basis[:, 2]
    pool = torch.stack([outside, mostly_outside, 0.9 * basis[:, 0] + 0.1 * basis[:, 3], basis[:, 1]])
    picks = textspan(vectors.float(), pool.float(), ["outside", "mostly outside", "first", "second"], 4)
    assert [p.text for p in picks[:2]] == ["first", "second"]
    assert "outside" not in [p.text for p in picks]  # nothing left to explain after the span is used up
    with pytest.raises(ValueError, match="texts"):
        textspan(vectors.float(), pool.float(), ["a"], 1)


def test_singular_vectors_are_the_routing_basis_mapped_through_the_output_projection():
    d, m, e, r = 8, 32, 5, 4
    U, V = orthonormal(m, r, 3).float(), orthonormal(d, r, 4).float()
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])
    comp = TaskComponents({"transformer.resblocks.1.mlp.c_fc.weight": LowRank(U, s, V)}, {})
    layer = LayerId(1, "mlp", "in")
    vectors, values = singular_vectors(comp, layer, num_tasks=4)  # k = floor(8 / 4) = 2
    assert torch.equal(vectors, V[:, :2]) and torch.equal(values, s[:2])
    proj = torch.randn(d, e)
    rows = joint_space_directions(vectors, values, proj)
    torch.testing.assert_close(rows, torch.stack([4.0 * V[:, 0] @ proj, 3.0 * V[:, 1] @ proj]))
    with pytest.raises(KeyError, match="attn.in_proj_weight"):
        singular_vectors(comp, LayerId(1, "attn", "in"), 4)


def test_demo_pool_holds_the_caption_vocabulary_and_distractors_once():
    pool = description_pool()
    assert len(pool) == len(set(pool))
    for family in FAMILIES.values():
        assert f"a photo of {family}." in pool
    assert all(f"a photo of {d}." in pool for d in DISTRACTORS)
    assert "a photo of the handwritten digit 7." in pool and len(pool) > len(TASKS) + len(DISTRACTORS)
    assert description_pool() == pool  # deterministic


COMMIT = "045b84f4591ae7a7dd8eb8f400bfb48ffb148251"


def test_pool_on_disk_is_verified_and_pinned_without_network(tmp_path):
    out = tmp_path / "pool.txt"
    out.write_text("An image of a car\nA close-up of a textured mesh\n\n")
    lock = LockFile(tmp_path / "lock.json")
    repo, path = "yossigandelsman/clip_text_span", "text_descriptions/image_descriptions_general.txt"
    record = fetch_descriptions(repo, COMMIT, path, out, lock)
    pinned = json.loads((tmp_path / "lock.json").read_text())["files"][lock_key(repo, COMMIT, path)]
    assert pinned == {"size": record.size, "sha256": record.sha256}
    assert read_descriptions(out) == ["An image of a car", "A close-up of a textured mesh"]
    fetch_descriptions(repo, COMMIT, path, out, lock, sha256=record.sha256)  # the config's pin agrees
    out.write_text("An image of a car\n")                                    # changed after pinning
    with pytest.raises(ChecksumMismatch, match="pinned"):
        fetch_descriptions(repo, COMMIT, path, out, lock)
    with pytest.raises(ValueError, match="40-hex"):
        fetch_descriptions(repo, "main", path, out, lock)


def test_textspan_figure_shows_every_pick(tmp_path, monkeypatch):
    per_task = hand_written_per_task()
    write_csv(per_task, tmp_path / "per_task.csv")
    sweep = pd.DataFrame([dict(layer=f"{b}.mlp.in", label="", block=b, module=m, io="in", token="cls", task="t1",
                               accuracy=0.5) for b in range(3) for m in ("attn", "mlp")])
    write_csv(sweep, tmp_path / "sweep.csv")
    write_json(tmp_path / "hp.json", {})
    picks = pd.DataFrame([dict(task=t, role=role, layer=f"{b}.mlp.in", block=b, k=2, rank=i + 1,
                               text=f"{t} {role} {i}", explained=0.5 / (i + 1))
                          for t in ("t1", "t2") for role, b in (("routing", 4), ("early", 1)) for i in range(3)])
    write_csv(picks, tmp_path / "picks.csv")
    images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    save_arrays(tmp_path / "images.npz", images=images, task=np.array([0, 0, 1, 1]), tasks=np.array(["t1", "t2"]))
    run_cli(make_plots, ["--per-task", tmp_path / "per_task.csv", "--hparams", tmp_path / "hp.json",
                         "--sweeps", f"tiny:3:{tmp_path / 'sweep.csv'}",
                         "--textspan", f"tiny:3:{tmp_path / 'picks.csv'}:{tmp_path / 'images.npz'}",
                         "--out-dir", tmp_path / "figures", *plot_options()], monkeypatch)
    for ext in ("pdf", "png"):
        assert (tmp_path / "figures" / f"textspan_tiny_3.{ext}").stat().st_size > 1000
    shown = pd.read_csv(tmp_path / "figures" / "textspan_tiny_3.csv")
    pd.testing.assert_frame_equal(shown, picks)
