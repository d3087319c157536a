"""Step evaluate_endpoints: zero-shot and fine-tuned accuracy of one task (val and test).

The fine-tuned test accuracy is the denominator of every normalised accuracy.
"""

from __future__ import annotations

from mass.encoder import create_visual, image_size
from mass.evaluation import evaluate_encoder
from mass.forward import log_images_forwarded
from mass.heads import load_heads
from mass.io import check_holds, load_tensors
from mass.task_vectors import visual_state_dict
from mass.training import default_device, set_threads
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.results import Endpoints
from mass_pipeline.steps._cli import step_parser


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--head", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--finetuned", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    heads, _ = load_heads([args.head], [args.task], args.model)
    check_holds(args.finetuned, task=args.task, model=args.model)
    result = {"task": args.task}
    for name, path in (("zeroshot", args.pretrained), ("finetuned", args.finetuned)):
        visual = create_visual(args.model, visual_state_dict(load_tensors(path)), default_device())
        for split in ("val", "test"):
            data = load_benchmark_split([args.data_dir], [args.task], split)
            acc = evaluate_encoder(visual, data, heads, image_size(args.model), args.batch_size, default_device())
            result[f"{name}_{split}"] = acc[args.task]
    Endpoints(**result).save(args.out)
    log_images_forwarded()


if __name__ == "__main__":
    main()
