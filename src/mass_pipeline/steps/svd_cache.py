"""Step svd_cache: per-task SVD cache (top components of every task matrix + non-matrix delta; with
``--attention qkv`` also of each attention's q, k and v blocks)."""

from __future__ import annotations

from mass.io import load_tensors, read_metadata
from mass.svd import STORAGE_DTYPES, TaskComponents
from mass.task_vectors import TaskVector
from mass.training import default_device, set_threads
from mass_pipeline.steps._cli import add_attention_arg, step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--finetuned", required=True)
    parser.add_argument("--rank-fraction", type=float, required=True,
                        help="components kept per matrix as a fraction of its rank (1 / smallest benchmark)")
    parser.add_argument("--storage-dtype", choices=sorted(STORAGE_DTYPES), required=True,
                        help="dtype of the stored singular vectors and deltas (readers upcast to float32)")
    add_attention_arg(parser)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    tv = TaskVector.from_state_dicts(load_tensors(args.pretrained), load_tensors(args.finetuned))
    comps = TaskComponents.from_task_vector(tv, args.rank_fraction, device=None, progress=True,
                                            attention=args.attention)
    held = {k: v for k, v in read_metadata(args.finetuned).items() if k in ("task", "model", "source")}
    comps.save(args.out, {"rank_fraction": str(args.rank_fraction), "attention": args.attention, **held},
               storage_dtype=args.storage_dtype)
    print(f"device {default_device()}: {len(comps.matrices)} matrices, {comps.num_parameters():,} stored parameters "
          f"in {args.storage_dtype}")


if __name__ == "__main__":
    main()
