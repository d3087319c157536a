"""Zero-shot classification heads built from CLIP's text tower.

For each class every prompt template is encoded, L2-normalised, averaged and re-normalised;
the stacked (classes x d) matrix is scaled by ``logit_scale.exp()`` (100 for OpenAI CLIP).
Image features are L2-normalised before the head and there is no bias, so a head is just a
tensor and is stored as safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mass.encoder import register_model_configs
from mass.io import FIX, ArtifactError, check_holds, held_by, load_tensors


def class_text(name: str | Sequence[str]) -> str:
    """How a class name goes into a prompt. A list of synonyms (FER2013 in the task-vector code) is
    rendered as that code's f-string renders a Python list, e.g. "['happy', 'smiling']": the published
    heads were built that way, so a head rebuilt from text must do the same to agree with them."""
    return name if isinstance(name, str) else str(list(name))


def prompt(template: str, name: str | Sequence[str]) -> str:
    """One prompt: ``template`` with its ``{c}`` (or ``{}``) placeholder filled with the class."""
    text = class_text(name)
    return template.format(c=text) if "{c}" in template else template.format(text)


def encode_text(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip_model.encode_text(tokens)`` on the tokens up to the longest prompt's end-of-text only.

    CLIP's text tower is causal and pools the end-of-text token (the highest id), so the padding
    after it never reaches the output: cutting the context there (77 -> ~10-20 tokens for the
    templates) gives the same features up to float rounding (~1e-6 relative) at a fraction of the
    cost (5x on the 2-core CPU for ViT-B-32). Other text towers are encoded as they are.
    """
    mask = getattr(clip_model, "attn_mask", None)
    if getattr(clip_model, "text_pool_type", None) != "argmax" or not isinstance(mask, torch.Tensor) \
            or not isinstance(getattr(clip_model, "text_projection", None), torch.Tensor):
        return clip_model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens).to(cast) + clip_model.positional_embedding[:length].to(cast)
    x = clip_model.ln_final(clip_model.transformer(x, attn_mask=mask[:length, :length]))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ clip_model.text_projection


@torch.no_grad()
def build_zero_shot_head(clip_model: nn.Module, tokenizer, classnames: Sequence[str | Sequence[str]],
                         templates: Sequence[str], device: str | torch.device = "cpu") -> torch.Tensor:
    clip_model = clip_model.to(device).eval()
    rows = []
    for name in classnames:
        tokens = tokenizer([prompt(t, name) for t in templates])
        emb = nn.functional.normalize(encode_text(clip_model, tokens.to(device)).float(), dim=-1)
        rows.append(nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows) * clip_model.logit_scale.exp().float()


def head_logits(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Logits of a head on image features (normalised here, as the task-vector code does)."""
    return nn.functional.normalize(features.float(), dim=-1) @ head.to(features.device).float().T


def tokenizer_for(model_name: str):
    register_model_configs()
    import open_clip

    return open_clip.get_tokenizer(model_name)


def load_heads(paths: Sequence[str], tasks: Sequence[str] | None = None,
               model: str | None = None) -> tuple[list[torch.Tensor], list[str]]:
    """Head matrices and head names (tasks sharing a head, like STL10/CIFAR10, share the name); with
    ``tasks`` (and ``model``), each file must be a head of that task (for that open_clip architecture:
    :func:`check_head`)."""
    heads, names = [], []
    for t, path in enumerate(paths):
        held = check_head(path, None if tasks is None else tasks[t], model)
        heads.append(load_tensors(path)["weight"])
        names.append(held.get("head") or held.get("task") or Path(path).stem)
    return heads, names


def check_head(path: str | os.PathLike, task: str | None, model: str | None) -> dict[str, str]:
    """Refuse a head file that serves other tasks than ``task`` or another architecture than ``model``: a
    head copied over another's with its checksum file passes every checksum, and heads of ViT-B/32 and
    ViT-B/16 even have the same shape. A head records the tasks it serves (``tasks``, comma-separated: a
    shared head serves several) or, written before that was recorded, its ``task``. Returns what it holds."""
    held = held_by(path)
    serves = held.get("tasks", held.get("task"))
    if task is not None and serves is not None and task not in serves.split(","):
        raise ArtifactError(f"{path} is the head of {serves}, not of {task!r}: another head was copied over it "
                            f"with its checksum (the checksum matches its own bytes); {FIX}")
    check_holds(path, model=model)
    return held
