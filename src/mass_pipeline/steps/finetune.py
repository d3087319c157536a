"""Step finetune: fine-tune an image encoder on one task with its zero-shot head frozen.

The recipe that produced the published checkpoints (task-vector code base): image tower only,
head frozen, AdamW (weight decay 0.1), cosine schedule with warm-up, gradient clipping at 1.0,
cross-entropy on the train part of ``<X>Val``. The demo uses it scaled down; the paper pipeline
uses it to re-fine-tune a task (the authors re-fine-tuned EMNIST).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from mass.data.store import load_split, to_model_input
from mass.encoder import create_visual, image_size
from mass.forward import count_forwarded, log_images_forwarded
from mass.heads import check_head, head_logits
from mass.io import load_tensors, save_tensors
from mass.task_vectors import StateDict, visual_state_dict
from mass.training import batches, cosine_with_warmup, set_threads
from mass_pipeline.steps._cli import step_parser


def finetune(model_name: str, pretrained: StateDict, head: torch.Tensor, images, labels, steps: int,
             batch_size: int, lr: float, warmup: int, weight_decay: float = 0.1, seed: int = 0,
             device: str = "cpu", desc: str | None = "finetune") -> StateDict:
    torch.manual_seed(seed)
    visual = create_visual(model_name, visual_state_dict(pretrained), device).train()
    size = image_size(model_name)
    optimizer = torch.optim.AdamW(visual.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = cosine_with_warmup(optimizer, warmup, steps)
    labels_t = torch.as_tensor(labels)
    bar = tqdm(batches(len(images), batch_size, steps, seed), total=steps, desc=desc, disable=desc is None)
    for idx in bar:
        x = to_model_input(torch.from_numpy(images[idx]), size, device)
        count_forwarded(len(idx))
        loss = nn.functional.cross_entropy(head_logits(visual(x), head), labels_t[idx].to(device))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(visual.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return {k: v.detach().cpu() for k, v in visual.state_dict().items()}


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pretrained", required=True, help="CLIP or image-encoder safetensors")
    parser.add_argument("--head", required=True, help="head safetensors of the task")
    parser.add_argument("--data", required=True, help="data root holding <task>/")
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--weight-decay", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images, labels = load_split(args.data, args.task, "train", mmap=False)
    check_head(args.head, args.task, args.model)
    weights = finetune(args.model, load_tensors(args.pretrained), load_tensors(args.head)["weight"], images, labels,
                       args.steps, args.batch_size, args.lr, args.warmup, args.weight_decay, args.seed, device,
                       desc=f"finetune {args.task}")
    save_tensors(args.out, weights, {"model": args.model, "task": args.task, "source": "mass_pipeline.steps.finetune"})
    log_images_forwarded()


if __name__ == "__main__":
    main()
