"""Step evaluate_tsvc: TSV-C, each task's own compressed update with its own head, on its test split.

Per task, theta_pre + alpha * (rank-k truncation of its task matrices, non-matrix tensors in full)
from the SVD cache (mass.tsvc), one forward over the task's test split per choice of k: the
benchmark's k = floor(r / T) (``--out``: MASS with an oracle router, the routing ceiling of
Table 3) and the rank that stores ``--size-fraction`` of each matrix (``--out-size``).
"""

from __future__ import annotations

import torch

from mass.data.store import RowSubset
from mass.encoder import create_visual, image_size, load_visual
from mass.forward import encode, log_images_forwarded
from mass.heads import head_logits, load_heads
from mass.io import load_tensors
from mass.svd import load_components
from mass.task_vectors import visual_state_dict
from mass.training import default_device
from mass.tsv import apply_delta
from mass.tsvc import compressed_delta, rank_summary, ranks_for, stored_fraction
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import add_merge_args, benchmark_parser, setup


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    add_merge_args(parser)
    parser.add_argument("--size-fraction", type=float, required=True,
                        help="stored size of each compressed matrix over the dense one (tsvc.size_fraction)")
    parser.add_argument("--out", required=True, help="JSON of TSV-C at the benchmark's k")
    parser.add_argument("--out-size", required=True, help="JSON of TSV-C at the size fraction")
    args = parser.parse_args()
    setup(args)
    tasks, T = args.tasks, len(args.tasks)
    pre = visual_state_dict(load_tensors(args.pretrained))
    heads, _ = load_heads(args.heads, args.tasks, args.model)
    test = load_benchmark_split(args.data_dirs, tasks, "test")
    results = {setting: {"test": {}, "size_fraction": {}, "ranks": {}} for setting in ("benchmark", "size")}
    visual = create_visual(args.model, pre, default_device())  # one tower; each model's weights are copied into it
    components = load_components(args.components, tasks=tasks, model=args.model)
    for t, (name, comp) in enumerate(zip(tasks, components, strict=True)):
        idx = test.indices_of(t)
        for setting, result in results.items():
            ranks = ranks_for(setting, comp, T, args.size_fraction)
            load_visual(visual, apply_delta(pre, compressed_delta(comp, ranks), args.alpha))
            feats, _ = encode(visual, RowSubset(test.images, idx), image_size(args.model), args.batch_size,
                              default_device(), desc=f"{name} TSV-C {setting}")
            pred = head_logits(feats, heads[t]).argmax(1)
            result["test"][name] = float((pred == test.labels[idx]).float().mean())
            result["size_fraction"][name] = stored_fraction(comp, ranks)
            result["ranks"][name] = rank_summary(ranks)
            print(f"{name} {setting}: accuracy {result['test'][name]:.4f}, "
                  f"stored {result['size_fraction'][name]:.4f} of the task vector", flush=True)
    hparams = {"alpha": args.alpha, "num_tasks": T}
    MethodResult(method="tsvc", **results["benchmark"],
                 hyperparameters={**hparams, "k": "floor(r / T)"}).save(args.out)
    MethodResult(method="tsvc_size", **results["size"],
                 hyperparameters={**hparams, "k": f"largest with k (m + n + 1) <= {args.size_fraction} m n",
                                  "size_fraction": args.size_fraction}).save(args.out_size)
    log_images_forwarded()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
