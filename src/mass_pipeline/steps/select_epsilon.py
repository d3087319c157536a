"""Step select_epsilon: choose epsilon on validation (never test).

Each candidate epsilon's merge was run over the validation splits; its score is the best
mean routing accuracy over the candidate layers (:func:`mass_pipeline.layer_search.best_location`).
The highest score wins; ties go to the earlier grid value.
"""

from __future__ import annotations

from mass.evaluation import pick_best
from mass_pipeline.layer_search import best_location
from mass_pipeline.results import EpsilonChoice, read_csv
from mass_pipeline.steps._cli import add_candidate_location_args, candidates, step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--epsilons", nargs="+", required=True)
    parser.add_argument("--sweeps", nargs="+", required=True, help="validation sweep CSV per epsilon")
    parser.add_argument("--merges", nargs="+", required=True, help="merge file per epsilon")
    add_candidate_location_args(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    scores = {}
    for eps, path in zip(args.epsilons, args.sweeps, strict=True):
        location, acc = best_location(read_csv(path), candidates(args))
        scores[eps] = {"layer": str(location.layer), "val_routing_accuracy": acc}
    best, _ = pick_best(args.epsilons, lambda e: scores[e]["val_routing_accuracy"])
    EpsilonChoice(epsilon=best, merge_file=args.merges[args.epsilons.index(best)], selected_on="val",
                  scores=scores).save(args.out)


if __name__ == "__main__":
    main()
