"""Step prepare_train_split: a task's train split, for the tasks fine-tuned here (``finetune``).

The same preparation as ``prepare_dataset`` (:func:`mass_pipeline.data.prepare.prepare`), for the train
split only: with published checkpoints no train images are needed, so only these tasks pay for them.
"""

from __future__ import annotations

from pathlib import Path

from mass_pipeline.data.prepare import prepare
from mass_pipeline.steps._cli import prepare_parser


def main(argv: list[str] | None = None) -> None:
    args = prepare_parser(__doc__).parse_args(argv)
    prepare(args.task, args.raw, args.out, args.image_size, args.emnist_orientation, args.threads,
            args.source_orientation, ["train"], args.max_images, args.edition)
    print(f"{args.task}: train written to {Path(args.out) / args.task}")


if __name__ == "__main__":
    main()
