"""Build a task's zero-shot head from the pretrained CLIP text tower (safetensors, no pickle)."""

from __future__ import annotations

import argparse

from mass.data.store import load_info
from mass.encoder import create_clip
from mass.heads import build_zero_shot_head, tokenizer_for
from mass.io import load_tensors, save_tensors
from mass.training import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pretrained", required=True, help="full CLIP state dict (safetensors)")
    parser.add_argument("--data", required=True, help="data root holding <task>/info.json")
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    clip = create_clip(args.model)
    clip.load_state_dict(load_tensors(args.pretrained))
    info = load_info(args.data, args.task)
    head = build_zero_shot_head(clip, tokenizer_for(args.model), info.classnames, info.templates)
    save_tensors(args.out, {"weight": head}, {"task": args.task, "head": info.head})


if __name__ == "__main__":
    main()
