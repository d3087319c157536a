"""Task vectors over open_clip image-encoder state dicts, and the layer naming MASS routes on.

A task vector is ``theta_ft - theta_pre`` (Ilharco et al.). Its 2-D float tensors are the
"task matrices" that TSV-M decomposes; every other tensor (biases, LayerNorms, the class
embedding, the 4-D patch-embedding conv) is merged by the mean over tasks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

StateDict = dict[str, torch.Tensor]

_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(attn|mlp)\.")
_PREFIXES = ("module.", "model.", "visual.", "image_encoder.")


def visual_keys(names: Iterable[str]) -> dict[str, str]:
    """Each image-encoder tensor name relative to open_clip's ``model.visual`` module -> the name it has
    in ``names``: a full CLIP state dict (``visual.*``), the task-vector code's ``ImageEncoder``
    (``model.visual.*``) or a bare ``visual`` state dict. Text-tower names are dropped."""
    names = list(names)
    has_visual = any(".visual." in f".{k}" for k in names)
    out: dict[str, str] = {}
    for name in names:
        key = name
        if has_visual:
            if ".visual." not in f".{key}":
                continue
            key = f".{key}".split(".visual.", 1)[1]
        else:
            while key.startswith(_PREFIXES):
                key = key.split(".", 1)[1]
        out[key] = name
    return out


def visual_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Keys of an image-encoder state dict relative to open_clip's ``model.visual`` module
    (:func:`visual_keys`); text-tower tensors are dropped."""
    return {key: state_dict[name] for key, name in visual_keys(state_dict).items()}


def is_matrix(name: str, tensor: torch.Tensor) -> bool:
    """Every 2-D float tensor is a task matrix (attention, MLP, projection, positional embedding)."""
    return tensor.ndim == 2 and tensor.is_floating_point()


ATTENTION_LAYOUTS = ("in_proj", "qkv")
_IN_PROJ = "attn.in_proj_weight"


def is_in_proj(name: str) -> bool:
    """Whether ``name`` is an attention's joint q/k/v input projection (open_clip's ``in_proj_weight``)."""
    return name.endswith(_IN_PROJ)


def qkv_names(in_proj: str) -> list[str]:
    """The q, k and v blocks of an attention's ``in_proj_weight``, named as the final edition's code names
    its Linear layers (``LinearMultiheadAttention``: ``in_proj_q``, ``in_proj_k``, ``in_proj_v``)."""
    prefix = in_proj.removesuffix("in_proj_weight")
    return [f"{prefix}in_proj_{part}.weight" for part in "qkv"]


def split_attention(tensors: Mapping[str, torch.Tensor]) -> StateDict:
    """``tensors`` with every attention's (3D x D) ``in_proj_weight`` replaced by its q, k and v blocks
    (D x D each, views): the matrices the final edition's routed methods decompose. Biases stay whole
    (merged by the mean, which is the same split or not)."""
    out: StateDict = {}
    for name, tensor in tensors.items():
        if is_in_proj(name):
            out.update(zip(qkv_names(name), tensor.chunk(3), strict=True))
        else:
            out[name] = tensor
    return out


def join_attention(tensors: Mapping[str, torch.Tensor]) -> StateDict:
    """The inverse of :func:`split_attention`: q, k, v blocks concatenated back into ``in_proj_weight``
    (open_clip's parameter), in the position of the q block; every other tensor unchanged."""
    out: StateDict = {}
    for name, tensor in tensors.items():
        if name.endswith("attn.in_proj_q.weight"):
            joint = name.removesuffix("in_proj_q.weight") + "in_proj_weight"
            out[joint] = torch.cat([tensors[n] for n in qkv_names(joint)])
        elif not name.endswith(("attn.in_proj_k.weight", "attn.in_proj_v.weight")):
            out[name] = tensor
    return out


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


class TaskVectorFiles(Sequence[TaskVector]):
    """The task vectors of fine-tuned encoders on disk (safetensors), read when asked for, never all at once.

    ``files[t]`` is task t's whole :class:`TaskVector` (one encoder read); ``stack(key)`` is one tensor of
    every task, (T, ...), read from each file alone (safetensors reads a single tensor). A merge that
    walks the model key by key (the baselines) or task by task then holds one layer of every task, or one
    task, plus theta_pre, whatever T: the same numbers as from task vectors in memory, without T copies
    of the model (Consensus TA at ViT-L/14 with 20 tasks would need ~60 GB).
    """

    def __init__(self, pretrained: Mapping[str, torch.Tensor], paths: Sequence[str | os.PathLike],
                 tasks: Sequence[str] | None = None, model: str | None = None):
        """``tasks``, ``model``: the task each file must hold, and its open_clip architecture
        (:func:`mass.io.check_holds`)."""
        from safetensors import safe_open

        from mass.io import check_holds, verify

        self.pretrained = visual_state_dict(pretrained)
        self.keys = [k for k, v in self.pretrained.items() if v.is_floating_point()]
        self.paths, self._names = [str(p) for p in paths], []
        for t, path in enumerate(self.paths):
            verify(path)
            check_holds(path, task=None if tasks is None else tasks[t], model=model)
            with safe_open(path, framework="pt") as fh:
                names = visual_keys(fh.keys())
            extra = sorted(set(names) ^ set(self.pretrained))
            if extra:
                raise ValueError(f"{path}: pretrained and fine-tuned encoders differ in keys, e.g. {extra[:3]}")
            self._names.append(names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, t: int) -> TaskVector:  # type: ignore[override]
        if not -len(self) <= t < len(self):
            raise IndexError(t)
        from mass.io import load_tensors

        return TaskVector.from_state_dicts(self.pretrained, load_tensors(self.paths[t]))

    def stack(self, key: str) -> torch.Tensor:
        """Tensor ``key`` of every task vector, stacked: (T, ...) float32."""
        from safetensors import safe_open

        pre = self.pretrained[key].float()
        rows = []
        for path, names in zip(self.paths, self._names, strict=True):
            with safe_open(path, framework="pt") as fh:
                rows.append(fh.get_tensor(names[key]).float() - pre)
        return torch.stack(rows)
