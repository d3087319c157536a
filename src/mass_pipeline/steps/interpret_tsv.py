"""Step interpret_tsv: TEXTSPAN decoding of every task's singular vectors at the routing layer and an early one.

For each task of the benchmark, the routing basis (top k = floor(r / T) singular vectors of the
task matrix at the location the projection router uses, chosen on validation and read from
``mass_proj.json``) and the same module at ``--early-block`` are mapped into CLIP's joint space
and decoded with TEXTSPAN over a pool of descriptions encoded by the same CLIP's text tower
(mass.textspan). Writes the picks (CSV) and a few test images of each task (npz) for the figure.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from mass.data.store import load_split
from mass.encoder import create_clip
from mass.heads import tokenizer_for
from mass.io import atomic_path, load_tensors, save_arrays, verify
from mass.svd import TaskComponents
from mass.task_vectors import LayerId
from mass.textspan import joint_space_directions, singular_vectors, textspan
from mass.training import set_threads
from mass_pipeline.results import MethodResult
from mass_pipeline.sources.descriptions import read_descriptions
from mass_pipeline.steps._cli import step_parser


@torch.no_grad()
def encode_texts(clip: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (N x e) of the pool, in batches."""
    clip.eval()
    parts = [clip.encode_text(tokenizer(texts[i:i + batch_size])).float() for i in range(0, len(texts), batch_size)]
    return torch.nn.functional.normalize(torch.cat(parts), dim=-1)


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pretrained", required=True, help="full CLIP state dict: text tower and visual.proj")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--data-dirs", nargs="+", required=True)
    parser.add_argument("--components", nargs="+", required=True)
    parser.add_argument("--mass-result", required=True, help="mass_proj.json: the routing location chosen on val")
    parser.add_argument("--descriptions", required=True, help="description pool, one per line")
    parser.add_argument("--early-block", type=int, required=True)
    parser.add_argument("--texts-per-task", type=int, required=True)
    parser.add_argument("--images-per-task", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", required=True, help="CSV of the picks")
    parser.add_argument("--out-images", required=True, help="npz of representative test images per task")
    args = parser.parse_args()
    set_threads(args.threads)
    tasks, T = args.tasks, len(args.tasks)
    data_dirs = args.data_dirs * T if len(args.data_dirs) == 1 else args.data_dirs
    chosen = LayerId.parse(MethodResult.load(args.mass_result).hyperparameters["layer"])
    layers = {"routing": chosen, "early": replace(chosen, block=args.early_block)}
    clip = create_clip(args.model)
    clip.load_state_dict(load_tensors(args.pretrained))
    depth = len(clip.visual.transformer.resblocks)
    if not 0 <= args.early_block < depth:
        raise SystemExit(f"--early-block {args.early_block} is not a block of {args.model} (0-{depth - 1}); "
                         "set textspan.early_block accordingly")
    verify(args.descriptions)
    texts = read_descriptions(args.descriptions)
    if not texts:
        raise SystemExit(f"{args.descriptions} holds no description")
    text_features = encode_texts(clip, tokenizer_for(args.model), texts)
    proj = clip.visual.proj.detach()
    rows = []
    rng = np.random.default_rng(args.seed)
    images, owners = [], []
    for t, (name, path) in enumerate(zip(tasks, args.components, strict=True)):
        comp = TaskComponents.load(path)
        for role, layer in layers.items():
            vectors, values = singular_vectors(comp, layer, T)
            picks = textspan(joint_space_directions(vectors, values, proj), text_features, texts, args.texts_per_task)
            for rank, pick in enumerate(picks, 1):
                rows.append({"task": name, "role": role, "layer": str(layer), "block": layer.block,
                             "k": vectors.shape[1], "rank": rank, "text": pick.text, "explained": pick.explained})
            print(f"{name} {role} {layer}: " + " | ".join(p.text for p in picks), flush=True)
        x, _ = load_split(data_dirs[t], name, "test")
        idx = np.sort(rng.choice(len(x), size=min(args.images_per_task, len(x)), replace=False))
        images.append(np.asarray(x[idx]))
        owners += [t] * len(idx)
    with atomic_path(args.out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    save_arrays(args.out_images, images=np.concatenate(images), task=np.array(owners), tasks=np.array(tasks))


if __name__ == "__main__":
    main()
