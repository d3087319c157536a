"""Task vectors over open_clip image-encoder state dicts, and the layer naming MASS routes on.

A task vector is ``theta_ft - theta_pre`` (Ilharco et al.). Its 2-D float tensors are the
"task matrices" that TSV-M decomposes; every other tensor (biases, LayerNorms, the class
embedding, the 4-D patch-embedding conv) is merged by the mean over tasks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

StateDict = dict[str, torch.Tensor]

_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(attn|mlp)\.")
_PREFIXES = ("module.", "model.", "visual.", "image_encoder.")


def visual_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Keys of an image-encoder state dict relative to open_clip's ``model.visual`` module.

    Accepts a full CLIP state dict (``visual.*``), the task-vector code's ``ImageEncoder``
    (``model.visual.*``) or a bare ``visual`` state dict. Text-tower tensors are dropped.
    """
    has_visual = any(".visual." in f".{k}" for k in state_dict)
    out: StateDict = {}
    for key, value in state_dict.items():
        if has_visual:
            if ".visual." not in f".{key}":
                continue
            key = f".{key}".split(".visual.", 1)[1]
        else:
            while key.startswith(_PREFIXES):
                key = key.split(".", 1)[1]
        out[key] = value
    return out


def is_matrix(name: str, tensor: torch.Tensor) -> bool:
    """Every 2-D float tensor is a task matrix (attention, MLP, projection, positional embedding)."""
    return tensor.ndim == 2 and tensor.is_floating_point()


@dataclass(frozen=True, order=True)
class LayerId:
    """A routing location: ``block`` index, ``module`` ("attn" or "mlp"), ``io`` ("in" or "out")."""

    block: int
    module: str
    io: str = "in"

    def __str__(self) -> str:
        return f"{self.block}.{self.module}.{self.io}"

    @classmethod
    def parse(cls, text: str) -> LayerId:
        block, module, io = text.split(".")
        if module not in ("attn", "mlp") or io not in ("in", "out"):
            raise ValueError(f"bad layer id {text!r}: expected '<block>.<attn|mlp>.<in|out>'")
        return cls(int(block), module, io)

    @property
    def label(self) -> str:
        """Short plot label, as in the paper's figures: A9 / M9 (inputs), A9o / M9o (outputs)."""
        return f"{self.module[0].upper()}{self.block}{'' if self.io == 'in' else 'o'}"

    @property
    def basis_key(self) -> str:
        """Task matrix whose singular vectors span this location's features.

        The input of a module is multiplied by its first matrix, so its right singular
        vectors (V) live in the input space; the output of a module is produced by its last
        matrix, so its left singular vectors (U) live in the output space.
        """
        prefix = f"transformer.resblocks.{self.block}"
        if self.io == "in":
            return f"{prefix}.attn.in_proj_weight" if self.module == "attn" else f"{prefix}.mlp.c_fc.weight"
        return f"{prefix}.attn.out_proj.weight" if self.module == "attn" else f"{prefix}.mlp.c_proj.weight"



@dataclass(frozen=True)
class Location:
    """Where the first pass records a routing residual: a layer and the token read there ("cls" or
    "mean"). ``str()`` is the key of first-pass files and results, ``"<block>.<module>.<io>.<token>"``."""

    layer: LayerId
    token: str = "cls"

    def __str__(self) -> str:
        return f"{self.layer}.{self.token}"

    @classmethod
    def parse(cls, text: str) -> Location:
        layer, _, token = text.rpartition(".")
        if token not in ("cls", "mean") or not layer:
            raise ValueError(f"bad routing location {text!r}: expected '<block>.<attn|mlp>.<in|out>.<cls|mean>'")
        return cls(LayerId.parse(layer), token)

def block_of(name: str) -> tuple[int, str] | None:
    """(block index, "attn" | "mlp") for a residual-block tensor name, else None."""
    match = _BLOCK.search(name)
    return (int(match.group(1)), match.group(2)) if match else None


def num_blocks(state_dict: Mapping[str, torch.Tensor]) -> int:
    blocks = {b[0] for b in (block_of(k) for k in state_dict) if b is not None}
    return max(blocks) + 1 if blocks else 0


class TaskVector:
    """``theta_ft - theta_pre`` over an image encoder (float tensors only); :func:`mass.tsv.apply_delta`
    adds a merge of them back onto theta_pre."""

    def __init__(self, vector: StateDict):
        self.vector = vector

    @classmethod
    def from_state_dicts(cls, pretrained: Mapping[str, torch.Tensor],
                         finetuned: Mapping[str, torch.Tensor]) -> TaskVector:
        pre, ft = visual_state_dict(pretrained), visual_state_dict(finetuned)
        missing = sorted(set(pre) ^ set(ft))
        if missing:
            raise ValueError(f"pretrained and fine-tuned encoders differ in keys, e.g. {missing[:3]}")
        return cls({k: (ft[k].float() - pre[k].float()) for k in pre if pre[k].is_floating_point()})
