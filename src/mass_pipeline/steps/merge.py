"""Step merge: the fixed TSV-M merge of a benchmark (Algorithm 1), optionally epsilon-filtered.

Writes the merged delta (safetensors, attention's in_proj_weight whole whichever way it was merged) and
a JSON of the tasks the filter kept per matrix.
"""

from __future__ import annotations

from mass.io import save_tensors, write_json
from mass.svd import load_components
from mass.training import default_device, set_threads
from mass.tsv import tsv_merge
from mass_pipeline.steps._cli import add_attention_arg, step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True, help="open_clip architecture the caches must be of")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--components", nargs="+", required=True)
    parser.add_argument("--epsilon", required=True, help="cosine threshold, or 'none' for plain TSV-M")
    parser.add_argument("--out", required=True)
    parser.add_argument("--accepted", required=True, help="JSON: kept tasks per matrix")
    add_attention_arg(parser)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    epsilon = None if args.epsilon == "none" else float(args.epsilon)
    components = load_components(args.components, args.attention, args.tasks, args.model)
    delta, accepted = tsv_merge(components, epsilon=epsilon, device=default_device())
    save_tensors(args.out, delta, {"epsilon": args.epsilon, "attention": args.attention})
    dropped = {name: [args.tasks[i] for i in range(len(args.tasks)) if i not in keep]
               for name, keep in accepted.items() if len(keep) < len(args.tasks)}
    write_json(args.accepted, {"epsilon": epsilon, "tasks": args.tasks, "dropped_per_matrix": dropped})
    print(f"epsilon={args.epsilon}: {len(dropped)} of {len(accepted)} matrices dropped at least one task")


if __name__ == "__main__":
    main()
