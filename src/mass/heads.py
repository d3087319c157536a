"""Zero-shot classification heads built from CLIP's text tower.

For each class every prompt template is encoded, L2-normalised, averaged and re-normalised;
the stacked (classes x d) matrix is scaled by ``logit_scale.exp()`` (100 for OpenAI CLIP).
Image features are L2-normalised before the head and there is no bias, so a head is just a
tensor and is stored as safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mass.encoder import register_model_configs


@torch.no_grad()
def build_zero_shot_head(clip_model: nn.Module, tokenizer, classnames: Sequence[str],
                         templates: Sequence[str], device: str | torch.device = "cpu") -> torch.Tensor:
    clip_model = clip_model.to(device).eval()
    rows = []
    for name in classnames:
        tokens = tokenizer([t.format(c=name) if "{c}" in t else t.format(name) for t in templates])
        emb = nn.functional.normalize(clip_model.encode_text(tokens.to(device)).float(), dim=-1)
        rows.append(nn.functional.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows) * clip_model.logit_scale.exp().float()


def head_logits(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Logits of a head on image features (normalised here, as the task-vector code does)."""
    return nn.functional.normalize(features.float(), dim=-1) @ head.to(features.device).float().T


def tokenizer_for(model_name: str):
    register_model_configs()
    import open_clip

    return open_clip.get_tokenizer(model_name)
