"""Pipeline step: z_l, the input of the nn and mlp routers, for the validation and test images.

z_l is the token representation at the routing location (the validation sweep's choice, or the
configured one) in the first pass's fixed model, computed by a forward that stops there. Both
learned routers read this one file, so each split is encoded once per benchmark, not once per
router. Storing z_l at every candidate location in the first pass would take several GB at
paper scale; after the sweep only one location is needed.
"""

from __future__ import annotations

import numpy as np

from mass.benchmark import (
    FirstPassResult,
    add_first_pass_model_args,
    common_parser,
    device,
    first_pass_weights,
    load_benchmark_split,
    setup,
)
from mass.encoder import create_visual, image_size
from mass.inference import layer_features
from mass.io import load_tensors, save_arrays
from mass.routing_sweep import add_routing_location_args, routing_location
from mass.task_vectors import LayerId, visual_state_dict


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True)
    add_first_pass_model_args(parser)
    parser.add_argument("--val-first-pass", required=True, help="the validation first pass (for the sweep)")
    add_routing_location_args(parser)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    layer, _ = routing_location(args, FirstPassResult.load(args.val_first_pass), args.tasks)
    visual = create_visual(args.model, first_pass_weights(visual_state_dict(load_tensors(args.pretrained)), args,
                                                           args.alpha), device())
    arrays = {"layer": np.array(layer), "token": np.array(args.token)}
    for split in ("val", "test"):
        data = load_benchmark_split(args.data_dirs, args.tasks, split)
        z = layer_features(visual, data.images, image_size(args.model), LayerId.parse(layer), args.token,
                           args.batch_size, device(), desc=f"z_l {split}")
        arrays.update({f"z_{split}": z.numpy(), f"task_{split}": data.task.numpy()})
    save_arrays(args.out, **arrays)


if __name__ == "__main__":
    main()
