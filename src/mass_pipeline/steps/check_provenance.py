"""Step check_provenance: one backbone's fine-tuned endpoints against its edition's published ones.

Writes every task's comparison (published, measured, difference, verdict, note) as CSV, then
exits with one message when a task is a mismatch (mass_pipeline.provenance): the SVD cache reads this
file, so no merge or evaluation starts on checkpoints that are not the edition's. The CSV is
left in the log when the check fails.
"""

from __future__ import annotations

import sys

import pandas as pd

from mass.io import atomic_path
from mass_pipeline.editions import EDITIONS, load_edition
from mass_pipeline.provenance import MISMATCH, compare, stop_message
from mass_pipeline.results import Endpoints
from mass_pipeline.steps._cli import step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--edition", required=True, choices=EDITIONS)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--endpoints", nargs="+", required=True, help="every task's endpoints.json")
    parser.add_argument("--tolerance", type=float, required=True, help="points (provenance.tolerance)")
    parser.add_argument("--accept", nargs="*", default=[], help="tasks whose deviation is accepted")
    parser.add_argument("--trained-here", nargs="*", default=[], help="tasks this run fine-tuned itself")
    parser.add_argument("--own", nargs="*", default=[], help="tasks whose encoder the config gives (finetuned.files)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    edition = load_edition(args.edition)
    measured = {e.task: e.finetuned_test for e in map(Endpoints.load, args.endpoints)}
    rows = compare(edition, args.backbone, measured, args.tolerance, frozenset(args.accept),
                   frozenset(args.trained_here), frozenset(args.own))
    table = pd.DataFrame([r.row() for r in rows])
    table.insert(0, "edition", edition.name)  # which edition this directory's results reproduce (common.smk)
    print(table.to_string(index=False))
    if not edition.finetuned_accuracy:
        print(f"the {edition.name} edition publishes no fine-tuned accuracies: nothing to check")
    mismatches = [r for r in rows if r.verdict == MISMATCH]
    if mismatches:
        sys.exit(stop_message(edition, mismatches, args.tolerance))
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)


if __name__ == "__main__":
    main()
