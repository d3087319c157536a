"""Step prepare_own_task: a declared task's validation and test splits (and info.json) from your files.

The config's ``tasks.<name>`` (an image folder, train/test CSV files, or a hub dataset that ``download_own_task``
downloaded to ``--raw``; :mod:`mass_pipeline.data.own_tasks`) stored as the catalog's tasks are, so every later
rule reads it the same way; the train split, which only fine-tuning reads, is the ``prepare_own_train_split`` step.
"""

from __future__ import annotations

from mass_pipeline.data.own_tasks import prepare_own
from mass_pipeline.steps._cli import own_task_of, own_task_parser


def main(argv: list[str] | None = None) -> None:
    args = own_task_parser(__doc__).parse_args(argv)
    info = prepare_own(own_task_of(args), args.out, args.image_size, ["val", "test"], args.max_images, args.threads,
                      args.raw)
    print(f"{args.task}: val {info.split_sizes['val']}, test {info.split_sizes['test']} images, "
          f"{len(info.classnames)} classes, written to {args.out}/{args.task}")


if __name__ == "__main__":
    main()
