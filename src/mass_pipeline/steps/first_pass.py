"""Step first_pass: MASS's first pass over every task of a benchmark split (:mod:`mass.forward`).

Runs the fixed model (TSV-M merge, or the pretrained encoder for proj_PRE) once and stores the
final features and the routing residuals at every block's attention/MLP input (and output)
for the requested tokens, so every later choice of layer, eta and top-k is free. With
``--selection`` the merge is the epsilon chosen on validation (its JSON names it).
"""

from __future__ import annotations

from mass.encoder import all_layers, create_visual, image_size
from mass.forward import FirstPassResult, first_pass, layer_bases, log_images_forwarded
from mass.io import load_tensors
from mass.svd import load_components
from mass.task_vectors import num_blocks, visual_state_dict
from mass.training import default_device
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.steps._cli import add_first_pass_model_args, benchmark_parser, first_pass_model, setup


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--components", nargs="+", required=True)
    add_first_pass_model_args(parser)
    parser.add_argument("--split", required=True, choices=["val", "test"])
    parser.add_argument("--ios", nargs="+", required=True, choices=["in", "out"])
    parser.add_argument("--tokens", nargs="+", required=True, choices=["cls", "mean"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    pre = visual_state_dict(load_tensors(args.pretrained))
    data = load_benchmark_split(args.data_dirs, args.tasks, args.split)
    layers = all_layers(num_blocks(pre), args.ios)
    components = load_components(args.components, tasks=args.tasks, model=args.model)
    bases = layer_bases(components, layers, num_tasks=len(args.tasks))
    visual = create_visual(args.model, first_pass_model(pre, args), default_device())
    feats, residuals = first_pass(visual, data.images, image_size(args.model), bases, args.tokens,
                                  args.batch_size, default_device(), desc=f"first pass {args.split}")
    FirstPassResult(feats, residuals, data.task, data.labels).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    main()
