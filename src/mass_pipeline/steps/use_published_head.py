"""Step use_published_head: the published head of a task, as the head every later step reads.

The published encoders were fine-tuned against these heads (``check_head`` fetched and converted
them); the copy is checked against its recorded sha256 and written atomically.
"""

from __future__ import annotations

from mass.io import copy_artifact
from mass_pipeline.steps._cli import step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--published", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    copy_artifact(args.published, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
