"""Step generate_demo_task: one synthetic demo task's train/val/test splits (:mod:`mass_pipeline.data.demo`)."""

from __future__ import annotations

from mass_pipeline.data.demo import TASKS, write_task
from mass_pipeline.steps._cli import step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--out", required=True, help="data root; the task goes to <out>/<task>/")
    parser.add_argument("--n-train", type=int, required=True)
    parser.add_argument("--n-test", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    write_task(args.task, args.out, args.n_train, args.n_test, args.seed)


if __name__ == "__main__":
    main()
