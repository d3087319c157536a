"""Step build_head: build a zero-shot head from the pretrained CLIP text tower (safetensors, no pickle).

``--task`` is a task (class names and templates from its prepared ``info.json``) or the name of
a head several tasks share, e.g. ``CIFAR10_STL10`` (class names and templates from the catalog).
"""

from __future__ import annotations

from mass.data.store import load_info
from mass.encoder import create_clip
from mass.heads import build_zero_shot_head, tokenizer_for
from mass.io import load_tensors, save_tensors
from mass.training import set_threads
from mass_pipeline.data import catalog
from mass_pipeline.steps._cli import step_parser


def head_prompts(data: str, name: str) -> tuple[list[str], list[str], str, list[str]]:
    """Class names, templates, head name and the tasks served, of a task's own head or of a shared head."""
    shared = catalog.named_shared_head(name)
    if shared is not None:
        return list(shared.classnames), list(shared.templates), shared.name, sorted(shared.label_maps)
    info = load_info(data, name)
    return info.classnames, info.templates, info.head, [name]


def main() -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pretrained", required=True, help="full CLIP state dict (safetensors)")
    parser.add_argument("--data", required=True, help="data root holding <task>/info.json")
    parser.add_argument("--task", required=True, help="task, or shared head name")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    clip = create_clip(args.model)
    clip.load_state_dict(load_tensors(args.pretrained))
    classnames, templates, name, served = head_prompts(args.data, args.task)
    head = build_zero_shot_head(clip, tokenizer_for(args.model), classnames, templates)
    save_tensors(args.out, {"weight": head}, {"task": args.task, "tasks": ",".join(served), "head": name,
                                              "model": args.model})


if __name__ == "__main__":
    main()
