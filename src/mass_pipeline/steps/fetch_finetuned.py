"""Step fetch_finetuned: a published fine-tuned image encoder as visual safetensors.

Downloaded, checked and converted by :func:`mass_pipeline.sources.fetch.fetch_finetuned`.
"""

from __future__ import annotations

from mass.io import load_tensors
from mass_pipeline.sources.download import LockFile, network_options
from mass_pipeline.sources.fetch import fetch_finetuned
from mass_pipeline.sources.layouts import LAYOUTS
from mass_pipeline.steps._cli import add_published_file_args, step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    add_published_file_args(parser)
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUTS),
                        help="where the source keeps its files (sources.finetuned_layout)")
    parser.add_argument("--pretrained", default=None,
                        help="theta_pre (CLIP safetensors), whose projection completes a source's encoders that "
                             "have none (fusionbench)")
    args = parser.parse_args(argv)
    if LAYOUTS[args.layout].needs_projection and args.pretrained is None:
        parser.error(f"--layout {args.layout}: its encoders have no projection; give theta_pre with --pretrained")
    projection = load_tensors(args.pretrained)["visual.proj"] if args.pretrained else None
    fetch_finetuned(args.model, args.task, args.repo, args.out, LockFile(args.lock), args.revision, args.endpoint,
                    args.raw, args.keep_raw, args.hub_model_dir, args.layout, projection, **network_options(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
