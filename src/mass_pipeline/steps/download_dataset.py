"""Step download_dataset: a task's hub parquet files and manifest.json
(:func:`mass_pipeline.sources.fetch.fetch_dataset`)."""

from __future__ import annotations

from mass_pipeline.data import catalog
from mass_pipeline.sources.download import LockFile, network_options
from mass_pipeline.sources.fetch import fetch_dataset
from mass_pipeline.steps._cli import add_download_args, step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--task", required=True, choices=catalog.TASKS)
    parser.add_argument("--repo", default=None, help="override the catalog's hub dataset repository")
    add_download_args(parser)
    args = parser.parse_args(argv)
    fetch_dataset(args.task, args.out, LockFile(args.lock), args.repo, args.revision, args.endpoint,
                  **network_options(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
