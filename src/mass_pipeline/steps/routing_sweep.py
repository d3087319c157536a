"""Step routing_sweep: per-layer routing (task-identification) accuracy from stored residuals.

For every recorded location and token, the top-1 task of the projection router (smallest
residual) is compared to the true task; one CSV row per (location, token, task)
(:func:`mass_pipeline.layer_search.sweep`).
"""

from __future__ import annotations

from mass.forward import FirstPassResult
from mass.io import atomic_path
from mass_pipeline.layer_search import sweep
from mass_pipeline.steps._cli import step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--first-pass", required=True)
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    table = sweep(FirstPassResult.load(args.first_pass), args.tasks)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)


if __name__ == "__main__":
    main()
