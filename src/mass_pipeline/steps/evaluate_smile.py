"""Step evaluate_smile: SMILE (the final edition's MoErging comparator) on a benchmark's test splits.

Every linear layer of the image tower becomes a sparse mixture of rank-k experts built from the SVD
cache, routed per token by the norm of the input's projection on each task's first gate_k right
singular vectors (mass.smile); each image's head is the majority vote over layers of the experts its
tokens chose. Scored as the editions' code scores a routed prediction and strictly, with the vote's
task-identification accuracy beside them. Nothing is chosen on validation: gate_k, k and top_k are
config keys (smile:).
"""

from __future__ import annotations

import torch

from mass.encoder import create_visual, image_size
from mass.evaluation import voted_head_scores
from mass.forward import log_images_forwarded
from mass.heads import load_heads
from mass.io import load_tensors
from mass.smile import SmileModel
from mass.svd import load_components
from mass.task_vectors import visual_state_dict
from mass.training import default_device
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import add_attention_arg, benchmark_parser, setup


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--components", nargs="+", required=True, help="SVD cache of each task")
    parser.add_argument("--gate-k", type=int, required=True, help="right singular vectors per task in the gate")
    parser.add_argument("--k", type=int, required=True, help="rank of each expert")
    parser.add_argument("--top-k", type=int, required=True, help="experts kept per token")
    add_attention_arg(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    pre = visual_state_dict(load_tensors(args.pretrained))
    device = default_device()
    components = load_components(args.components, args.attention, args.tasks, args.model)
    model = SmileModel(create_visual(args.model, pre, device), pre, components, args.gate_k, args.k, args.top_k, device)
    heads, names = load_heads(args.heads, args.tasks, args.model)
    test = load_benchmark_split(args.data_dirs, args.tasks, "test")
    features, head = model.predict(test.images, image_size(args.model), args.batch_size, desc="SMILE")
    MethodResult(method="smile", **voted_head_scores(features, head, heads, names, test),
                 hyperparameters={"gate_k": args.gate_k, "k": args.k, "top_k": args.top_k,
                                  "attention": args.attention}).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
