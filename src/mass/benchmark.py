"""Loading what a benchmark's pipeline steps share: task data, heads and cached components.

Paths are passed in by the rules (nothing here reads the config); tasks keep benchmark order,
which is the order of the epsilon filter, of tables and of plots.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mass.data import catalog
from mass.data.store import StackedSplits, load_split
from mass.io import ArtifactError, load_arrays, load_tensors, read_json
from mass.svd import TaskComponents
from mass.task_vectors import StateDict, visual_state_dict
from mass.training import set_threads
from mass.tsv import apply_delta

if TYPE_CHECKING:
    from mass.inference import MassModel


@dataclass
class SplitData:
    """All tasks' samples of one split, concatenated in benchmark order (images memory-mapped)."""

    images: StackedSplits
    labels: torch.Tensor
    task: torch.Tensor
    task_names: list[str]

    def indices_of(self, t: int) -> np.ndarray:
        return np.flatnonzero(self.task.numpy() == t)


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


def load_heads(paths: Sequence[str]) -> tuple[list[torch.Tensor], list[str]]:
    """Head matrices and head names (tasks sharing a head, like STL10/CIFAR10, share the name)."""
    heads, names = [], []
    for path in paths:
        heads.append(load_tensors(path)["weight"])
        names.append(_head_name(path))
    return heads, names


def _head_name(path: str) -> str:
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        meta = fh.metadata() or {}
    return meta.get("head") or meta.get("task") or Path(path).stem


def load_components(paths: Sequence[str]) -> list[TaskComponents]:
    return [TaskComponents.load(p) for p in paths]


@dataclass
class FirstPassResult:
    """What the first pass stored for one split: final features, residuals per location, owners."""

    features: torch.Tensor
    residuals: dict[str, torch.Tensor]
    task: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def load(cls, path: str) -> FirstPassResult:
        arrays = load_arrays(path)
        try:
            residuals = {k[len("res:"):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("res:")}
            return cls(torch.from_numpy(arrays["features"]), residuals, torch.from_numpy(arrays["task"]),
                       torch.from_numpy(arrays["labels"]))
        except KeyError as err:
            raise ArtifactError(f"{path} lacks {err}; delete it and rerun the first-pass rule") from err

    def residuals_at(self, key: str) -> torch.Tensor:
        """Residuals at ``<block>.<module>.<io>.<token>``; a location the first pass did not record
        fails saying why: a block the model does not have, or an io/token the config left out."""
        if key not in self.residuals:
            raise ArtifactError(self._not_recorded(key))
        return self.residuals[key]

    def _not_recorded(self, key: str) -> str:
        parts = [k.split(".") for k in self.residuals]
        blocks = sorted({int(p[0]) for p in parts})
        ios, tokens = sorted({p[2] for p in parts}), sorted({p[3] for p in parts})
        recorded = (f"blocks {blocks[0]}-{blocks[-1]}, ios {ios}, tokens {tokens}" if blocks
                    else "no location")
        block, _, io, token = (key.split(".") + ["", "", "", ""])[:4]
        if block.isdigit() and blocks and int(block) not in blocks:
            return (f"location {key!r}: block {block} does not exist in this model (the first pass recorded "
                    f"{recorded}); set routing.layer to a block in {blocks[0]}-{blocks[-1]}, or 'auto'")
        return (f"the first pass did not record location {key!r} (it recorded {recorded}); add "
                f"{io!r} to first_pass.ios and {token!r} to first_pass.tokens in the config")


@dataclass
class RoutingFeatures:
    """z_l of the validation and test images at one routing location (``mass.routing_features``)."""

    layer: str
    token: str
    z: dict[str, torch.Tensor]
    task: dict[str, torch.Tensor]

    @classmethod
    def load(cls, path: str) -> RoutingFeatures:
        arrays = load_arrays(path)
        try:
            return cls(str(arrays["layer"]), str(arrays["token"]),
                       {s: torch.from_numpy(arrays[f"z_{s}"]) for s in ("val", "test")},
                       {s: torch.from_numpy(arrays[f"task_{s}"]) for s in ("val", "test")})
        except KeyError as err:
            raise ArtifactError(f"{path} lacks {err}; delete it and rerun the routing_features rule") from err

    def check(self, path: str, layer: str, token: str, task: dict[str, torch.Tensor]) -> None:
        """Fail, naming the file, when it holds another location's z_l or other samples."""
        if (self.layer, self.token) != (layer, token):
            raise ArtifactError(f"{path} holds z_l at {self.layer}.{self.token}, not at {layer}.{token}; "
                                "delete it and rerun the routing_features rule")
        for split, owners in task.items():
            if not torch.equal(self.task[split], owners):
                raise ArtifactError(f"{path} was made for other {split} samples; "
                                    "delete it and rerun the routing_features rule")


def add_first_pass_model_args(parser: argparse.ArgumentParser) -> None:
    """Options naming the first pass's fixed model (the TSV-M merge, or theta_pre without --merged)."""
    parser.add_argument("--merged", nargs="*", default=[], help="merged delta(s); none: the pretrained encoder")
    parser.add_argument("--selection", help="JSON with the chosen epsilon; picks one of --merged")


def first_pass_weights(pre: StateDict, args: argparse.Namespace, alpha: float) -> StateDict:
    """theta_pre + alpha * the merge of --merged (with --selection, the one validation chose), or theta_pre."""
    merged = args.merged
    if args.selection:
        chosen = read_json(args.selection)["merge_file"]
        if chosen not in merged:
            raise SystemExit(f"{args.selection} names {chosen}, which is not among --merged")
        merged = [chosen]
    return apply_delta(pre, load_tensors(merged[0]), alpha) if merged else pre


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_mass_model_args(parser: argparse.ArgumentParser) -> None:
    """Options naming what the MASS second pass merges: theta_pre, the task components, alpha."""
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--components", nargs="+", required=True, help="SVD cache of each task")
    parser.add_argument("--alpha", type=float, required=True, help="TSV-M scaling of the second pass (merge.alpha)")


def mass_model(args: argparse.Namespace) -> MassModel:
    """The MASS model every step evaluates (per-sample and batched routing alike), from its options.

    open_clip is imported here, not with this module: steps such as the routing sweep never need it.
    """
    from mass.encoder import create_visual, image_size
    from mass.inference import MassModel

    pre = visual_state_dict(load_tensors(args.pretrained))
    heads, head_names = load_heads(args.heads)
    return MassModel(create_visual(args.model, pre, device()), pre, load_components(args.components), heads,
                     head_names, image_size(args.model), device(), args.alpha)


def common_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark step takes: tasks in order, where their files are, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="open_clip architecture name")
    parser.add_argument("--tasks", nargs="+", required=True, help="task names in benchmark order")
    parser.add_argument("--data-dirs", nargs="+", required=True, help="data root of each task")
    parser.add_argument("--heads", nargs="+", required=True, help="head safetensors of each task")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def setup(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    if len(args.data_dirs) not in (len(args.tasks), 1) or len(args.heads) != len(args.tasks):
        raise SystemExit("--tasks, --data-dirs and --heads must list one entry per task")
    if len(args.data_dirs) == 1:
        args.data_dirs = args.data_dirs * len(args.tasks)
