"""Step prepare_dataset: a task's validation and test splits (and info.json) from its downloaded parquet files.

:func:`mass_pipeline.data.prepare.prepare` decodes every image and applies CLIP's evaluation preprocessing
up to the pixel level; the train split, which only fine-tuning reads, is the ``prepare_train_split`` step.
"""

from __future__ import annotations

from pathlib import Path

from mass_pipeline.data.prepare import prepare
from mass_pipeline.steps._cli import prepare_parser


def main(argv: list[str] | None = None) -> None:
    args = prepare_parser(__doc__).parse_args(argv)
    prepare(args.task, args.raw, args.out, args.image_size, args.emnist_orientation, args.threads,
            args.source_orientation, ["val", "test"], args.max_images, args.edition)
    print(f"{args.task}: val test written to {Path(args.out) / args.task}")


if __name__ == "__main__":
    main()
