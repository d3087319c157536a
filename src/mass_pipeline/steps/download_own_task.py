"""Step download_own_task: a declared task's hub dataset (``tasks.<name>.hub``) at its pinned commit, and manifest.json.

The same download as the catalog's tasks' (``download_dataset``;
:func:`mass_pipeline.sources.fetch.fetch_declared_dataset`): every parquet file of the train and test splits
verified and pinned in the lock file, then checked to have the configured columns; ``prepare_own_task`` and
``prepare_own_train_split`` store the splits from there.
"""

from __future__ import annotations

from mass_pipeline.data.own_tasks import OwnTask
from mass_pipeline.sources.download import LockFile, add_network_args, network_options
from mass_pipeline.sources.fetch import fetch_declared_dataset
from mass_pipeline.steps._cli import add_hub_dataset_args, hub_block, step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--task", required=True, help="the task's name (a key of the config's tasks)")
    parser.add_argument("--hub", required=True, help="hub dataset repository (tasks.<name>.hub.repo)")
    add_hub_dataset_args(parser)
    parser.add_argument("--out", required=True, help="folder of the parquet files and manifest.json")
    parser.add_argument("--lock", required=True, help="lock file pinning revisions and checksums")
    parser.add_argument("--endpoint", default=None, help="hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    add_network_args(parser)
    args = parser.parse_args(argv)
    task = OwnTask.from_config(args.task, {"hub": hub_block(args)})
    fetch_declared_dataset(task, args.out, LockFile(args.lock), args.endpoint, **network_options(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
