"""A benchmark split stays memory-mapped: StackedSplits reads rows across task files like one array."""

import numpy as np
import pytest

from mass.data.store import RowSubset, StackedSplits, make_loader, save_split
from mass_pipeline.data.benchmark import load_benchmark_split


def parts():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8) for n in (5, 1, 7)]


def test_rows_equal_those_of_the_concatenation():
    a, whole = StackedSplits(parts()), np.concatenate(parts())
    assert len(a) == 13 and a.shape == whole.shape
    for index in (slice(None), slice(3, 9), slice(None, None, -2), [12, 0, 5, 5, 6], np.array([4, 5, 6]),
                  whole[:, 0, 0, 0] > 128, -1, 6):
        np.testing.assert_array_equal(a[index], whole[index])
    with pytest.raises(IndexError):
        a[[13]]


def test_loader_batches_cross_task_boundaries():
    a, whole = StackedSplits(parts()), np.concatenate(parts())
    batches = [b.numpy() for b in make_loader(a, batch_size=4, workers=0)]
    assert [len(b) for b in batches] == [4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(batches), whole)


def test_row_subset_loads_the_chosen_rows_in_their_order():
    a, whole = StackedSplits(parts()), np.concatenate(parts())
    rows = np.array([12, 0, 6, 5, 5, 1])
    batches = [b.numpy() for b in make_loader(RowSubset(a, rows), batch_size=4, workers=0)]
    assert [len(b) for b in batches] == [4, 2] and RowSubset(a, rows).shape == (6, 4, 4, 3)
    np.testing.assert_array_equal(np.concatenate(batches), whole[rows])


def test_benchmark_split_is_memory_mapped(tmp_path):
    for name, x in zip(("a", "b", "c"), parts(), strict=True):
        save_split(tmp_path, name, "test", x, np.arange(len(x)))
    data = load_benchmark_split([str(tmp_path)] * 3, ["a", "b", "c"], "test")
    assert all(isinstance(p, np.memmap) for p in data.images.parts)
    np.testing.assert_array_equal(data.images[:], np.concatenate(parts()))
    assert data.task.tolist() == [0] * 5 + [1] + [2] * 7
