"""A benchmark's split (:class:`mass.data.store.SplitData`) read from the pipeline's data folders.

Tasks keep benchmark order, which is the order of the epsilon filter, of tables and of plots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mass.data.store import SplitData, StackedSplits, load_split
from mass_pipeline.data import catalog


def load_benchmark_split(data_dirs: Sequence[str], tasks: Sequence[str], split: str) -> SplitData:
    """``data_dirs[i]`` is the data root holding ``tasks[i]``. Labels of tasks that share a head in
    this benchmark (STL10 and CIFAR10 in the 20-task one) are mapped onto that head's classes."""
    images, labels, owner = [], [], []
    for t, (root, name) in enumerate(zip(data_dirs, tasks, strict=True)):
        x, y = load_split(root, name, split)
        shared = catalog.benchmark_head(name, tasks)
        if shared is not None:
            y = np.asarray(shared.label_maps[name], dtype=np.int64)[y]
        images.append(x)
        labels.append(torch.as_tensor(y))
        owner.append(torch.full((len(y),), t, dtype=torch.long))
    return SplitData(StackedSplits(images), torch.cat(labels), torch.cat(owner), list(tasks))
