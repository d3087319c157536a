"""Pipeline step: choose epsilon on validation (never test).

Each candidate epsilon's merge was run over the validation splits; its score is the best
mean routing accuracy over the candidate layers. The highest score wins; ties go to the
earlier grid value.
"""

from __future__ import annotations

import argparse

from mass.io import read_csv, write_json
from mass.routing_sweep import add_candidate_location_args, best_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", nargs="+", required=True)
    parser.add_argument("--sweeps", nargs="+", required=True, help="validation sweep CSV per epsilon")
    parser.add_argument("--merges", nargs="+", required=True, help="merge file per epsilon")
    add_candidate_location_args(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    scores = {}
    for eps, path in zip(args.epsilons, args.sweeps, strict=True):
        layer, acc = best_layer(read_csv(path), tuple(args.blocks), args.modules, args.io, args.token)
        scores[eps] = {"layer": layer, "val_routing_accuracy": acc}
    best = max(args.epsilons, key=lambda e: (scores[e]["val_routing_accuracy"], -args.epsilons.index(e)))
    write_json(args.out, {"epsilon": best, "merge_file": args.merges[args.epsilons.index(best)],
                          "selected_on": "val", "scores": scores})


if __name__ == "__main__":
    main()
