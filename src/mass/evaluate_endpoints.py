"""Pipeline step: zero-shot and fine-tuned accuracy of one task (val and test).

The fine-tuned test accuracy is the denominator of every normalised accuracy.
"""

from __future__ import annotations

import argparse

from mass.benchmark import device, load_benchmark_split, load_heads
from mass.encoder import create_visual, image_size
from mass.evaluation import evaluate_encoder
from mass.io import load_tensors, write_json
from mass.task_vectors import visual_state_dict
from mass.training import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--head", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--finetuned", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    heads, _ = load_heads([args.head])
    result = {"task": args.task}
    for name, path in (("zeroshot", args.pretrained), ("finetuned", args.finetuned)):
        visual = create_visual(args.model, visual_state_dict(load_tensors(path)), device())
        for split in ("val", "test"):
            data = load_benchmark_split([args.data_dir], [args.task], split)
            acc = evaluate_encoder(visual, data, heads, image_size(args.model), args.batch_size, device())
            result[f"{name}_{split}"] = acc[args.task]
    write_json(args.out, result)


if __name__ == "__main__":
    main()
