"""Pipeline step: MASS's first pass over every task of a benchmark split.

Runs the fixed model (TSV-M merge, or the pretrained encoder for proj_PRE) once and stores the
final features and the routing residuals at every block's attention/MLP input (and output)
for the requested tokens, so every later choice of layer, eta and top-k is free. With
``--selection`` the merge is the epsilon chosen on validation (its JSON names it).
"""

from __future__ import annotations

import numpy as np

from mass.benchmark import (
    add_first_pass_model_args,
    common_parser,
    device,
    first_pass_weights,
    load_benchmark_split,
    load_components,
    setup,
)
from mass.encoder import all_layers, create_visual, image_size
from mass.inference import first_pass, layer_bases
from mass.io import load_tensors, save_arrays
from mass.task_vectors import num_blocks, visual_state_dict


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--components", nargs="+", required=True)
    add_first_pass_model_args(parser)
    parser.add_argument("--split", required=True, choices=["val", "test"])
    parser.add_argument("--ios", nargs="+", default=["in"], choices=["in", "out"])
    parser.add_argument("--tokens", nargs="+", default=["cls"], choices=["cls", "mean"])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    pre = visual_state_dict(load_tensors(args.pretrained))
    weights = first_pass_weights(pre, args, args.alpha)
    data = load_benchmark_split(args.data_dirs, args.tasks, args.split)
    layers = all_layers(num_blocks(pre), args.ios)
    bases = layer_bases(load_components(args.components), layers, num_tasks=len(args.tasks))
    visual = create_visual(args.model, weights, device())
    feats, residuals = first_pass(visual, data.images, image_size(args.model), bases, args.tokens,
                                  args.batch_size, device(), desc=f"first pass {args.split}")
    save_arrays(args.out, features=feats.numpy(), task=data.task.numpy(), labels=data.labels.numpy(),
                **{f"res:{k}": v.numpy().astype(np.float32) for k, v in residuals.items()})


if __name__ == "__main__":
    main()
