"""Step routing_features: z_l, the input of the nn and mlp routers, for the validation and test images.

z_l is the token representation at the routing location (the validation sweep's choice, or the
configured one) in the first pass's fixed model, computed by a forward that stops there. Both
learned routers read this one file, so each split is encoded once per benchmark, not once per
router. Storing z_l at every candidate location in the first pass would take several GB at
paper scale; after the sweep only one location is needed.
"""

from __future__ import annotations

from mass.encoder import create_visual, image_size
from mass.forward import FirstPassResult, RoutingFeatures, layer_features, log_images_forwarded
from mass.io import load_tensors
from mass.task_vectors import visual_state_dict
from mass.training import default_device
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.steps._cli import (
    add_first_pass_model_args,
    add_routing_location_args,
    benchmark_parser,
    first_pass_model,
    routing_location,
    setup,
)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--pretrained", required=True)
    add_first_pass_model_args(parser)
    parser.add_argument("--val-first-pass", required=True, help="the validation first pass (for the sweep)")
    add_routing_location_args(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    location, _ = routing_location(args, FirstPassResult.load(args.val_first_pass), args.tasks)
    visual = create_visual(args.model, first_pass_model(visual_state_dict(load_tensors(args.pretrained)), args),
                           default_device())
    z, task = {}, {}
    for split in ("val", "test"):
        data = load_benchmark_split(args.data_dirs, args.tasks, split)
        z[split] = layer_features(visual, data.images, image_size(args.model), location.layer, location.token,
                                  args.batch_size, default_device(), desc=f"z_l {split}")
        task[split] = data.task
    RoutingFeatures(location, z, task).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    main()
