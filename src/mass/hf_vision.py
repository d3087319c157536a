"""Hugging Face transformers CLIP image towers in open_clip's layout.

FusionBench's fine-tuned CLIP models (``tanganke/clip-vit-base-patch32_<task>`` and the like) and many
users' own checkpoints are transformers ``CLIPVisionModel`` state dicts (``model.safetensors`` or
``pytorch_model.bin``). Everything here reads open_clip's ``model.visual`` names, so they are renamed
once, on reading; no transformers import is needed. The correspondence, one block ``i``:

=====================================================  =========================================
transformers (``vision_model.`` prefix)                open_clip ``visual.``
=====================================================  =========================================
``embeddings.patch_embedding.weight``                  ``conv1.weight``
``embeddings.class_embedding``                         ``class_embedding``
``embeddings.position_embedding.weight``               ``positional_embedding``
``pre_layrnorm.*`` (transformers' spelling)            ``ln_pre.*``
``encoder.layers.i.layer_norm1.*`` / ``layer_norm2.*`` ``transformer.resblocks.i.ln_1.*`` / ``ln_2.*``
``encoder.layers.i.self_attn.{q,k,v}_proj.*``          ``...attn.in_proj_weight`` / ``in_proj_bias``
                                                       (q, k, v stacked in that order)
``encoder.layers.i.self_attn.out_proj.*``              ``...attn.out_proj.*``
``encoder.layers.i.mlp.fc1.*`` / ``fc2.*``             ``...mlp.c_fc.*`` / ``mlp.c_proj.*``
``post_layernorm.*``                                   ``ln_post.*``
``visual_projection.weight`` (P x D, no bias)          ``proj`` (D x P, its transpose)
=====================================================  =========================================

transformers 4 saved a ``CLIPVisionModel`` with the ``vision_model.`` prefix (FusionBench's files, written by
4.47); transformers 5 saves it without (the model is the vision transformer itself). Both are read.

A bare ``CLIPVisionModel`` has no projection (it lives in ``CLIPModel`` / ``CLIPVisionModelWithProjection``):
FusionBench fine-tuned the vision model only, so its projection is the pretrained one and is taken from
theta_pre. transformers' ``quick_gelu`` activation (OpenAI's CLIP) is open_clip's ``-quickgelu`` models.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

_PREFIX = "vision_model."
_RENAMES = {
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.class_embedding": "class_embedding",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_DROPPED = ("embeddings.position_ids",)  # a buffer of 0..N-1, not a weight
_BARE = ("embeddings.", "pre_layrnorm.", "encoder.layers.", "post_layernorm.")  # transformers 5's CLIPVisionModel


def is_transformers_layout(names: Mapping[str, object] | list[str]) -> bool:
    """Whether a state dict's names are a transformers CLIP image tower's (``pre_layrnorm``, transformers'
    spelling, is in no other layout)."""
    return any(name.startswith("pre_layrnorm.") or ".pre_layrnorm." in name for name in names)


def from_transformers(state: Mapping[str, torch.Tensor],
                      projection: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A transformers CLIP image-tower state dict -> open_clip ``visual`` names (module docstring).

    ``projection``: open_clip's ``proj`` (D x P) for a tower that has none (a bare ``CLIPVisionModel``);
    a tower with ``visual_projection.weight`` uses its own. Text-tower and unknown names raise, so a
    layout this does not know is never half converted."""
    vision = {}
    own_projection = None
    for name, tensor in state.items():
        if name.endswith("visual_projection.weight"):
            own_projection = tensor.t().contiguous()
        elif name.startswith(_PREFIX) or f".{_PREFIX}" in name:
            vision[name[name.index(_PREFIX) + len(_PREFIX):]] = tensor
        elif name.startswith(_BARE):
            vision[name] = tensor
        elif not (name.startswith(("text_model.", "text_projection.")) or name == "logit_scale"):
            raise ValueError(f"{name!r} is not a transformers CLIP tensor name")
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in vision.items():
        if name in _DROPPED:
            continue
        if name in _RENAMES:
            key = _RENAMES[name]
            out[key] = tensor.squeeze(0) if key == "positional_embedding" and tensor.ndim == 3 else tensor
            continue
        if not name.startswith("encoder.layers."):
            raise ValueError(f"{name} has no open_clip counterpart (not a CLIP image-tower tensor)")
        index, rest = name.removeprefix("encoder.layers.").split(".", 1)
        blocks.setdefault(int(index), {})[rest] = tensor
    for i, block in sorted(blocks.items()):
        out.update(_block(i, block))
    proj = own_projection if own_projection is not None else projection
    if proj is None:
        raise ValueError("the transformers checkpoint has no visual_projection (a bare CLIPVisionModel): give the "
                         "pretrained model's projection (open_clip's visual.proj, D x P)")
    out["proj"] = proj
    return out


def _block(i: int, block: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = f"transformer.resblocks.{i}."
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        parts = [block.pop(f"self_attn.{p}_proj.{kind}", None) for p in "qkv"]
        if any(p is None for p in parts):
            raise ValueError(f"encoder.layers.{i}: q, k and v projections ({kind}) are not all there")
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
    for name, tensor in block.items():
        module, kind = name.rsplit(".", 1)
        if module not in _BLOCK:
            raise ValueError(f"encoder.layers.{i}.{name} has no open_clip counterpart")
        out[f"{prefix}{_BLOCK[module]}.{kind}"] = tensor
    return out
