"""Command-line options the steps share, and building library objects from them.

Every option a rule always passes is required here: a default that every rule overrides would
only hide a rule that forgot it. Nothing here reads the config; the rules pass values in.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import torch

from mass.training import set_threads
from mass_pipeline.sources.download import add_network_args

if TYPE_CHECKING:  # imported where used: a step that builds no encoder never pays for open_clip (~1.5 s)
    from mass.forward import FirstPassResult
    from mass.mass_model import MassModel
    from mass.task_vectors import Location, StateDict
    from mass_pipeline.layer_search import Candidates


def step_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the step's docstring."""
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """Options every benchmark step takes: the model, tasks in order, where their files are, threads."""
    parser = step_parser(doc)
    parser.add_argument("--model", required=True, help="open_clip architecture name")
    parser.add_argument("--tasks", nargs="+", required=True, help="task names in benchmark order")
    parser.add_argument("--data-dirs", nargs="+", required=True, help="data root of each task, or one for all")
    parser.add_argument("--heads", nargs="+", required=True, help="head safetensors of each task")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    return parser


def setup(args: argparse.Namespace) -> None:
    """Threads and seed; one data root per task (a single root serves every task)."""
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    if len(args.data_dirs) not in (len(args.tasks), 1) or len(args.heads) != len(args.tasks):
        raise SystemExit("--tasks, --data-dirs and --heads must list one entry per task")
    if len(args.data_dirs) == 1:
        args.data_dirs = args.data_dirs * len(args.tasks)


def add_first_pass_model_args(parser: argparse.ArgumentParser) -> None:
    """Options naming the first pass's fixed model (the TSV-M merge, or theta_pre without --merged)."""
    parser.add_argument("--merged", nargs="*", default=[], help="merged delta(s); none: the pretrained encoder")
    parser.add_argument("--selection", help="JSON with the chosen epsilon; picks one of --merged")
    parser.add_argument("--alpha", type=float, required=True, help="scaling of the merge (merge.alpha)")


def first_pass_model(pre: StateDict, args: argparse.Namespace) -> StateDict:
    """theta_pre + alpha * a merge: the one --selection (the JSON naming the epsilon chosen on validation)
    picks among --merged, or the only one given; theta_pre when none is given."""
    from mass.io import ArtifactError, load_tensors
    from mass.tsv import apply_delta
    from mass_pipeline.results import EpsilonChoice

    merged = args.merged
    if args.selection:
        chosen = EpsilonChoice.load(args.selection).merge_file
        if chosen not in merged:
            raise ArtifactError(f"{args.selection} names {chosen}, which is not among the merges given")
        merged = [chosen]
    return apply_delta(pre, load_tensors(merged[0]), args.alpha) if merged else pre


def add_merge_args(parser: argparse.ArgumentParser) -> None:
    """Options naming what a merge of the SVD cache reads: theta_pre, the task components, alpha."""
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--components", nargs="+", required=True, help="SVD cache of each task")
    parser.add_argument("--alpha", type=float, required=True, help="scaling of the merge (merge.alpha)")


def add_mass_model_args(parser: argparse.ArgumentParser) -> None:
    """Options naming what the MASS second pass merges: :func:`add_merge_args` and attention's layout."""
    add_merge_args(parser)
    add_attention_arg(parser)


def add_attention_arg(parser: argparse.ArgumentParser) -> None:
    """How MASS's merges lay out attention's q, k and v: one in_proj matrix or three (merge.attention)."""
    from mass.task_vectors import ATTENTION_LAYOUTS

    parser.add_argument("--attention", choices=ATTENTION_LAYOUTS, required=True,
                        help="q, k, v as one in_proj matrix or as three (merge.attention)")


def mass_model(args: argparse.Namespace) -> MassModel:
    """The MASS model every step evaluates (per-sample and batched routing alike)."""
    from mass.mass_model import MassModel

    return MassModel.from_files(args.model, args.pretrained, args.components, args.heads, args.alpha,
                                attention=args.attention, tasks=args.tasks)


def add_candidate_location_args(parser: argparse.ArgumentParser) -> None:
    """Options naming the candidate routing locations (:class:`mass_pipeline.layer_search.Candidates`)."""
    parser.add_argument("--blocks", nargs=2, type=int, required=True, help="candidate block range (inclusive)")
    parser.add_argument("--modules", nargs="+", required=True, choices=["attn", "mlp"])
    parser.add_argument("--io", required=True, choices=["in", "out"])
    parser.add_argument("--token", required=True, choices=["cls", "mean"])


def candidates(args: argparse.Namespace) -> Candidates:
    from mass_pipeline.layer_search import Candidates

    return Candidates(tuple(args.blocks), tuple(args.modules), args.io, args.token)


def add_routing_location_args(parser: argparse.ArgumentParser) -> None:
    """Options naming the routing location: a fixed ``--layer``, or 'auto' among the candidates."""
    parser.add_argument("--layer", required=True, help="'<block>.<attn|mlp>.<in|out>', or 'auto' (validation sweep)")
    add_candidate_location_args(parser)


def routing_location(args: argparse.Namespace, val_first_pass: FirstPassResult,
                     tasks: list[str]) -> tuple[Location, float | None]:
    """The configured location, or for 'auto' the validation sweep's best candidate and its mean accuracy."""
    from mass.task_vectors import LayerId, Location
    from mass_pipeline.layer_search import best_location, sweep

    if args.layer != "auto":
        return Location(LayerId.parse(args.layer), args.token), None
    return best_location(sweep(val_first_pass, tasks), candidates(args))


def add_download_args(parser: argparse.ArgumentParser, lock_required: bool = True) -> None:
    """Options of every download step: target, lock file, revision, endpoint and network patience."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--lock", required=lock_required, help="lock file pinning revisions and checksums")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: pinned default branch)")
    parser.add_argument("--endpoint", default=None, help="hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    add_network_args(parser)


def prepare_parser(doc: str | None) -> argparse.ArgumentParser:
    """Options of the two steps that store a task's prepared splits (:func:`mass_pipeline.data.prepare.prepare`)."""
    from mass_pipeline.data import catalog

    parser = step_parser(doc)
    parser.add_argument("--task", required=True, choices=catalog.TASKS)
    parser.add_argument("--raw", required=True, help="folder with manifest.json and the downloaded parquet files")
    parser.add_argument("--out", required=True, help="data root; the task is written to <out>/<task>/")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--emnist-orientation", choices=catalog.EMNIST_ORIENTATIONS, required=True,
                        help="orientation the EMNIST checkpoint was fine-tuned on (ignored for other tasks)")
    parser.add_argument("--source-orientation", choices=catalog.EMNIST_ORIENTATIONS, default=None,
                        help="orientation of the source's EMNIST images (default: the catalog's)")
    parser.add_argument("--threads", type=int, required=True, help="image decoding threads")
    parser.add_argument("--max-images", type=int, default=None,
                        help="keep only the first that many images of val and test (a smoke run, not the paper)")
    parser.add_argument("--edition", required=True, help="the edition whose heads' classes are stored (edition)")
    return parser


def add_published_file_args(parser: argparse.ArgumentParser) -> None:
    """Options naming a published file of the fine-tuned checkpoints' repository (encoder or head)."""
    from mass_pipeline.data import catalog

    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True, choices=catalog.TASKS)
    parser.add_argument("--repo", required=True, help="hub model repository, e.g. nik-dim/tall_masks")
    parser.add_argument("--hub-model-dir", default=None, help="folder name of the model in the repo (default: --model)")
    parser.add_argument("--raw", default=None, help="where the downloaded .pt goes (default: next to --out)")
    parser.add_argument("--keep-raw", action="store_true")
    add_download_args(parser)


def own_task_parser(doc: str | None) -> argparse.ArgumentParser:
    """Options of the two steps that store a declared task's splits (:func:`mass_pipeline.data.own_tasks.prepare_own`):
    the config's ``tasks.<name>`` block, one option per key."""
    parser = step_parser(doc)
    parser.add_argument("--task", required=True, help="the task's name (a key of the config's tasks)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--folder", help="<folder>/train/<class>/* and <folder>/test/<class>/*")
    where.add_argument("--csv", nargs=2, metavar=("TRAIN", "TEST"), help="CSV files with the columns path,label")
    where.add_argument("--hub", help="hub dataset repository, downloaded to --raw by download_own_task")
    add_hub_dataset_args(parser)
    parser.add_argument("--raw", default=None, help="with --hub: the folder of manifest.json and the parquet files")
    parser.add_argument("--classnames", nargs="+", default=None, help="class names in label order (default: read)")
    parser.add_argument("--templates", nargs="+", default=None,
                        help="prompt templates, {c} = class name "
                        "(default: mass_pipeline.data.own_tasks.DEFAULT_TEMPLATES)")
    parser.add_argument("--val-size", type=int, default=None, help="validation images (default: the <X>Val carve)")
    parser.add_argument("--out", required=True, help="data root; the task is written to <out>/<task>/")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True, help="image decoding threads")
    parser.add_argument("--max-images", type=int, default=None,
                        help="keep only the first that many images of val and test (a smoke run)")
    return parser


# the options of a declared hub dataset (tasks.<name>.hub) besides --hub itself, and their keys there
_HUB_OPTIONS = {"revision": "revision", "train_split": "splits.train", "test_split": "splits.test",
                "image_column": "image_column", "label_column": "label_column"}


def add_hub_dataset_args(parser: argparse.ArgumentParser) -> None:
    """Options of a declared task's hub dataset (``tasks.<name>.hub``), each required with ``--hub``; the rules
    pass them all, with the schema's defaults filled in."""
    for dest, key in _HUB_OPTIONS.items():
        parser.add_argument(f"--{dest.replace('_', '-')}", default=None, help=f"with --hub: tasks.<name>.hub.{key}")
    parser.add_argument("--data-dir", default=None, help="with --hub: the repository folder of the parquet files")


def hub_block(args: argparse.Namespace) -> dict | None:
    """The ``tasks.<name>.hub`` block a command line with :func:`add_hub_dataset_args` describes (None without
    ``--hub``)."""
    if not args.hub:
        return None
    missing = [f"--{dest.replace('_', '-')}" for dest in _HUB_OPTIONS if getattr(args, dest) is None]
    if missing:
        raise SystemExit(f"--hub {args.hub} needs {' '.join(missing)}")
    return {"repo": args.hub, "revision": args.revision, "splits": {"train": args.train_split, "test": args.test_split},
            "image_column": args.image_column, "label_column": args.label_column, "data_dir": args.data_dir}


def own_task_of(args: argparse.Namespace):
    """The declared task an :func:`own_task_parser` command line describes."""
    from mass_pipeline.data.own_tasks import OwnTask

    block = {"folder": args.folder, "csv": dict(zip(("train", "test"), args.csv, strict=True)) if args.csv else None,
             "hub": hub_block(args), "classnames": args.classnames, "templates": args.templates,
             "val_size": args.val_size}
    return OwnTask.from_config(args.task, block)
