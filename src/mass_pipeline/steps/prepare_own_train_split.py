"""Step prepare_own_train_split: a declared task's train split, for fine-tuning it here (``finetune``).

The same preparation as ``prepare_own_task`` (:func:`mass_pipeline.data.own_tasks.prepare_own`) for the train split
only (what is left of the train images after the validation carve): a task whose encoder is given as a file
(``finetuned.files``) never reads it.
"""

from __future__ import annotations

from mass_pipeline.data.own_tasks import prepare_own
from mass_pipeline.steps._cli import own_task_of, own_task_parser


def main(argv: list[str] | None = None) -> None:
    args = own_task_parser(__doc__).parse_args(argv)
    info = prepare_own(own_task_of(args), args.out, args.image_size, ["train"], args.max_images, args.threads,
                      args.raw)
    print(f"{args.task}: train {info.split_sizes['train']} images written to {args.out}/{args.task}")


if __name__ == "__main__":
    main()
