"""Step check_head: a published classification head as safetensors, compared with the head built from text.

:func:`mass_pipeline.sources.fetch.fetch_head` reads the pickled head with the restricted unpickler
(tensors only) and reports the cosine between it and the pipeline's text-built head.
"""

from __future__ import annotations

from mass_pipeline.sources.download import LockFile, network_options
from mass_pipeline.sources.fetch import fetch_head
from mass_pipeline.steps._cli import add_published_file_args, step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    add_published_file_args(parser)
    parser.add_argument("--compare-with", default=None, help="the pipeline's head of this task (safetensors)")
    parser.add_argument("--report", default=None, help="JSON report of the comparison (with --compare-with)")
    args = parser.parse_args(argv)
    if (args.compare_with is None) != (args.report is None):
        parser.error("--compare-with and --report go together")
    fetch_head(args.model, args.task, args.repo, args.out, LockFile(args.lock), args.revision, args.endpoint,
               args.raw, args.keep_raw, args.hub_model_dir, args.compare_with, args.report, **network_options(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
