"""Step evaluate_tsvm: the TSV-M baseline (oracle heads) read off the stored first-pass features."""

from __future__ import annotations

from mass.evaluation import accuracy_with_oracle_heads
from mass.forward import FirstPassResult
from mass.heads import load_heads
from mass_pipeline.data.benchmark import SplitData
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True, help="open_clip architecture the heads must be of")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--heads", nargs="+", required=True)
    parser.add_argument("--first-pass", required=True, help="test-split first pass of the unfiltered merge")
    parser.add_argument("--alpha", type=float, required=True, help="the scaling that first pass used (merge.alpha)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fp = FirstPassResult.load(args.first_pass)
    data = SplitData(None, fp.labels, fp.task, args.tasks)
    heads, _ = load_heads(args.heads, args.tasks, args.model)
    MethodResult(method="tsvm", test=accuracy_with_oracle_heads(fp.features, data, heads),
                 hyperparameters={"alpha": args.alpha, "epsilon": None}).save(args.out)


if __name__ == "__main__":
    main()
