"""Step demo_descriptions: the demo's TEXTSPAN description pool, generated offline
(mass_pipeline.data.demo.description_pool).

One description per line: the caption vocabulary the demo CLIP was pretrained on (every template
with every task's family and class phrases) plus distractor descriptions of things no demo task shows.
"""

from __future__ import annotations

from mass.io import write_text
from mass_pipeline.data.demo import description_pool
from mass_pipeline.steps._cli import step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    pool = description_pool()
    write_text(args.out, "\n".join(pool) + "\n")
    print(f"{len(pool)} descriptions written to {args.out}")


if __name__ == "__main__":
    main()
