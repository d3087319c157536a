"""Step evaluate_wemoe: WEMoE (the final edition's other MoErging comparator) on a benchmark's test splits.

A Task Arithmetic base whose every block's MLP is a weight-ensembling MoE over the tasks' MLP task vectors
(mass.wemoe); its routers are adapted to lower the entropy of each task's own head on that task's
unlabelled images (the final code: the test images, the one method of Table 2 that sees them; or the
validation images, ``--adapt-on val``), then each task's test split is evaluated in batches of its own
images with the batch-averaged gates, the head voted over blocks. Scored as the editions' code scores a
routed prediction and strictly, with the vote's task-identification accuracy.
"""

from __future__ import annotations

import time

import torch

from mass.data.store import RowSubset
from mass.encoder import image_size
from mass.evaluation import voted_head_scores
from mass.forward import log_images_forwarded
from mass.heads import head_logits, load_heads
from mass.io import load_tensors
from mass.task_vectors import TaskVectorFiles, visual_state_dict
from mass.training import default_device
from mass.wemoe import adapt, from_task_vectors, predict, ta_alpha, task_batches
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import benchmark_parser, setup


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--finetuned", nargs="+", required=True, help="fine-tuned encoder of each task")
    parser.add_argument("--init-lambda", type=float, required=True, help="fc2 bias of every router")
    parser.add_argument("--steps", type=int, required=True, help="adaptation steps (each: one batch per task)")
    parser.add_argument("--adapt-batch-size", type=int, required=True, help="images per task and step")
    parser.add_argument("--lr", type=float, required=True, help="AdamW learning rate of the routers")
    parser.add_argument("--eval-batch-size", type=int, required=True,
                        help="images per evaluated batch, each from one task (one merged MLP per batch)")
    parser.add_argument("--adapt-on", choices=["test", "val"], required=True,
                        help="the unlabelled images the routers adapt on")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    device, size, T = default_device(), image_size(args.model), len(args.tasks)
    pre = visual_state_dict(load_tensors(args.pretrained))
    tvs = TaskVectorFiles(pre, args.finetuned, args.tasks, args.model)
    alpha = ta_alpha(T)
    model = from_task_vectors(args.model, pre, tvs, args.init_lambda, args.seed, device)
    heads, names = load_heads(args.heads, args.tasks, args.model)
    heads = [h.to(device) for h in heads]
    adapt_split = load_benchmark_split(args.data_dirs, args.tasks, args.adapt_on)
    sources = [task_batches(RowSubset(adapt_split.images, adapt_split.indices_of(t)), size, args.adapt_batch_size,
                            device) for t in range(T)]
    started = time.perf_counter()
    losses = adapt(model, sources, heads, args.steps, args.lr, head_logits)
    print(f"adaptation: {args.steps} steps on {args.adapt_on} in {time.perf_counter() - started:.1f} s; summed "
          f"entropy {losses[0] if losses else float('nan'):.4f} -> {losses[-1] if losses else float('nan'):.4f}",
          flush=True)
    test = load_benchmark_split(args.data_dirs, args.tasks, "test")
    features = torch.empty(len(test.labels), heads[0].shape[1])
    head = torch.empty(len(test.labels), dtype=torch.long)
    for t in range(T):  # each task's test split alone, as the final code evaluates: batches of one task
        idx = test.indices_of(t)
        features[idx], head[idx] = predict(model, RowSubset(test.images, idx), size, args.eval_batch_size, device)
    MethodResult(method="wemoe", **voted_head_scores(features, head, [h.cpu() for h in heads], names, test),
                 hyperparameters={"ta_alpha": alpha, "init_lambda": args.init_lambda, "steps": args.steps,
                                  "adapt_batch_size": args.adapt_batch_size, "lr": args.lr,
                                  "eval_batch_size": args.eval_batch_size, "adapted_on": args.adapt_on,
                                  "entropy_first_step": losses[0] if losses else None,
                                  "entropy_last_step": losses[-1] if losses else None}).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    main()
