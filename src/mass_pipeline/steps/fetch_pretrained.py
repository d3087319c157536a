"""Step fetch_pretrained: theta_pre, OpenAI CLIP as open_clip builds it, as full-CLIP safetensors.

With published fine-tuned checkpoints, the image tower comes from their repository's zero-shot
checkpoint (:func:`mass_pipeline.sources.fetch.fetch_pretrained`), and the report records how far it is
from open_clip's copy of the OpenAI weights.
"""

from __future__ import annotations

from mass_pipeline.sources.download import LockFile, network_options
from mass_pipeline.sources.fetch import fetch_pretrained
from mass_pipeline.sources.layouts import LAYOUTS
from mass_pipeline.steps._cli import add_download_args, step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--from-file", default=None, help="use this checkpoint on disk instead of the hub")
    parser.add_argument("--repo", default=None, help="hub repository (default: open_clip's for pretrained='openai')")
    parser.add_argument("--filename", default=None)
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache to look in first (default: HF_HUB_CACHE)")
    parser.add_argument("--raw", default=None, help="where a downloaded checkpoint goes (default: next to --out)")
    parser.add_argument("--keep-raw", action="store_true")
    parser.add_argument("--zeroshot-repo", default=None,
                        help="image tower from the zero-shot encoder of this repository (or owner, crisostomi layout)")
    parser.add_argument("--zeroshot-layout", required=True, choices=sorted(LAYOUTS),
                        help="where --zeroshot-repo keeps it (mass_pipeline.sources.layouts)")
    parser.add_argument("--zeroshot-revision", default=None, help="revision of --zeroshot-repo (default: pinned main)")
    parser.add_argument("--hub-model-dir", default=None, help="folder name of the model in --zeroshot-repo")
    parser.add_argument("--report", default=None, help="JSON: which weights theta_pre is, and the difference")
    add_download_args(parser, lock_required=False)
    args = parser.parse_args(argv)
    fetch_pretrained(args.model, args.out, LockFile(args.lock) if args.lock else None, args.from_file, args.repo,
                     args.filename, args.revision, args.endpoint, args.cache_dir, args.raw, args.keep_raw,
                     args.zeroshot_repo, args.zeroshot_revision, args.hub_model_dir, args.report,
                     args.zeroshot_layout, **network_options(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
