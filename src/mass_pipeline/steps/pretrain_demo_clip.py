"""Step pretrain_demo_clip: contrastive pretraining of the demo's tiny CLIP on captioned synthetic images.

The demo needs a CLIP whose text tower yields real zero-shot heads, without downloading one.
This rule pretrains both towers with the symmetric InfoNCE loss on clean ("pretrain" style)
images of every demo generator, captioned with the prompt templates. Captions repeat within a
batch, so targets are spread uniformly over all texts with the same caption.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mass.data.store import to_model_input
from mass.encoder import create_clip, image_size
from mass.forward import count_forwarded, log_images_forwarded
from mass.heads import tokenizer_for
from mass.io import save_tensors
from mass.training import batches, cosine_with_warmup, set_threads
from mass_pipeline.data.demo import FAMILIES, TASKS, TEMPLATES, class_phrases, generate
from mass_pipeline.steps._cli import step_parser


def captioned_corpus(per_task: int, seed: int, domain_per_task: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Images, the caption of each and an integer caption id (for multi-positive targets).

    ``per_task`` clean images per task are captioned with their class; ``domain_per_task``
    "task"-style images (the look of the fine-tuning data, drawn with another seed) only with
    their task's family, so the model learns to tell the domains apart, as web-pretrained CLIP
    tells the paper's datasets apart, without learning their classes in that style.
    """
    images, captions = [], []
    rng = np.random.default_rng(seed)
    for task in TASKS:
        x, y = generate(task, per_task, seed, style="pretrain")
        phrases = class_phrases(task)
        images.append(x)
        captions += [TEMPLATES[rng.integers(len(TEMPLATES))].format(c=phrases[int(c)]) for c in y]
        if domain_per_task:
            images.append(generate(task, domain_per_task, seed + 1000, style="task")[0])
            captions += [TEMPLATES[rng.integers(len(TEMPLATES))].format(c=FAMILIES[task])] * domain_per_task
    ids = np.unique(np.array(captions), return_inverse=True)[1]
    return np.concatenate(images), captions, ids


def pretrain(model_name: str, per_task: int, steps: int, batch_size: int, lr: float, seed: int,
             domain_per_task: int = 0, progress: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    model = create_clip(model_name)
    tokenizer, size = tokenizer_for(model_name), image_size(model_name)
    images, captions, ids = captioned_corpus(per_task, seed, domain_per_task)
    tokens = tokenizer(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = cosine_with_warmup(optimizer, max(1, steps // 10), steps)
    model.train()
    bar = tqdm(batches(len(images), batch_size, steps, seed), total=steps, desc="pretrain", disable=not progress)
    for idx in bar:
        count_forwarded(len(idx))
        img = nn.functional.normalize(model.encode_image(to_model_input(torch.from_numpy(images[idx]), size)), dim=-1)
        txt = nn.functional.normalize(model.encode_text(tokens[idx]), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        same = torch.from_numpy(ids[idx][:, None] == ids[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-task", type=int, required=True)
    parser.add_argument("--domain-per-task", type=int, required=True,
                        help="task-style images per task captioned with the task's family only")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    model = pretrain(args.model, args.per_task, args.steps, args.batch_size, args.lr, args.seed, args.domain_per_task)
    save_tensors(args.out, model.state_dict(),
                 {"model": args.model, "source": "mass_pipeline.steps.pretrain_demo_clip"})
    log_images_forwarded()


if __name__ == "__main__":
    main()
