"""open_clip image encoders: construction, weight loading and the first-pass probe.

The probe hooks every residual block of a ViT and, while the merged model classifies a batch,
computes the routing residuals of every task at every candidate location (input or output of
the attention and MLP modules, CLS or mean token). One forward pass therefore feeds the TSV-M
baseline, the per-layer routing sweep and any later choice of layer, eta and top-k.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources

import torch
from torch import nn

from mass.routing import projection_residuals
from mass.task_vectors import LayerId, Location

_REGISTERED = False


def _open_clip():
    """open_clip, imported on first use: it costs ~1.5 s, which steps that only read first-pass
    files (the probes below need torch alone) would pay at every start."""
    import open_clip

    return open_clip


def register_model_configs() -> None:
    """Make the model configs shipped in ``mass/model_configs`` known to open_clip."""
    global _REGISTERED
    if not _REGISTERED:
        open_clip = _open_clip()
        open_clip.add_model_config(str(resources.files("mass") / "model_configs"))
        _REGISTERED = True


def create_clip(model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu"):
    """An open_clip CLIP model (``pretrained`` is an open_clip tag such as "openai", or None).

    ``device="meta"`` builds the shapes only, without drawing the random initial weights (which takes
    seconds on a CPU for ViT-B/L).
    """
    register_model_configs()
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights" is expected here
    try:
        with torch.device("meta") if str(device) == "meta" else contextlib.nullcontext():
            return _open_clip().create_model(model_name, pretrained=pretrained, device=device)
    finally:
        logging.getLogger().setLevel(quiet)


def create_visual(model_name: str, state_dict: Mapping[str, torch.Tensor] | None = None,
                  device: str | torch.device = "cpu") -> nn.Module:
    """The image tower alone: randomly initialised, or loaded with a (visual-relative) state dict.

    With a state dict the tower is built on the meta device and given uninitialised memory before
    the weights are copied in, so no random initialisation is paid for (2 s of every job's start-up
    for ViT-B-32 on a CPU, 4 s for ViT-L-14). The copy leaves ``state_dict`` untouched and unshared.
    """
    if state_dict is None:
        return create_clip(model_name).visual.to(device).eval()
    visual = create_clip(model_name, device="meta").visual
    if set(dict(visual.named_buffers())) - set(visual.state_dict()):
        # a buffer no state dict carries must keep the value its constructor computed
        visual = create_clip(model_name).visual.to(device)
    else:
        visual = visual.to_empty(device=device)
    load_visual(visual, state_dict)
    return visual.eval()


def load_visual(visual: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy weights into an existing image tower in place (no module rebuilt)."""
    missing, unexpected = visual.load_state_dict(dict(state_dict), strict=False)
    if missing or unexpected:
        raise ValueError(f"encoder weights do not fit the architecture: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def image_size(model_name: str) -> int:
    register_model_configs()
    size = _open_clip().get_model_config(model_name)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def _token(x: torch.Tensor, token: str) -> torch.Tensor:
    """CLS (position 0) or mean over the token axis of a batch-first (N, L, D) activation."""
    return x[:, 0] if token == "cls" else x.mean(1)


class ProbesRecorded(Exception):
    """Raised by a stopping :class:`FirstPassProbe` once its deepest location is recorded."""


class FirstPassProbe:
    """Hooks that record, per batch, routing residuals at every requested location and token.

    ``bases`` maps each :class:`LayerId` to a (T, D, k) tensor of per-task orthonormal bases.
    open_clip 3.x runs its transformer batch-first, so the CLS token is position 0 of axis 1.
    With ``stop``, the forward ends (:class:`ProbesRecorded`) right after the deepest location:
    routing alone needs no later layer (for ViT-B-32 routed at block 9, ~80% of a forward).
    """

    def __init__(self, visual: nn.Module, bases: Mapping[LayerId, torch.Tensor],
                 tokens: Sequence[str] = ("cls",), stop: bool = False):
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError("FirstPassProbe expects a batch-first open_clip transformer")
        self.tokens = tuple(tokens)
        self.bases = dict(bases)
        self.last = max(self.bases) if stop and self.bases else None  # LayerId order = forward order
        self.batch: dict[Location, torch.Tensor] = {}
        self._handles = []
        blocks = visual.transformer.resblocks
        for layer, basis in self.bases.items():
            module = getattr(blocks[layer.block], layer.module)
            if layer.io == "in":
                hook = self._make_pre_hook(layer, basis)
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                self._handles.append(module.register_forward_hook(self._make_post_hook(layer, basis)))

    def _record(self, layer: LayerId, basis: torch.Tensor | None, x: torch.Tensor) -> None:
        for token in self.tokens:
            self.batch[Location(layer, token)] = self._measure(_token(x, token), basis).cpu()
        if layer == self.last:
            raise ProbesRecorded

    def _measure(self, z: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        return projection_residuals(z, basis.to(z.device))

    def _make_pre_hook(self, layer: LayerId, basis: torch.Tensor):
        def hook(_module, args):
            self._record(layer, basis, args[0])
        return hook

    def _make_post_hook(self, layer: LayerId, basis: torch.Tensor):
        def hook(_module, _args, output):
            self._record(layer, basis, output[0] if isinstance(output, tuple) else output)
        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        batch, self.batch = self.batch, {}
        return batch

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FirstPassProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class FeatureProbe(FirstPassProbe):
    """Records the representation z itself (N x D per location and token), for the routers that
    are trained on z_l (nearest neighbour, MLP) rather than projecting it onto task subspaces."""

    def __init__(self, visual: nn.Module, layers: Iterable[LayerId], tokens: Sequence[str] = ("cls",),
                 stop: bool = False):
        super().__init__(visual, dict.fromkeys(layers), tokens, stop)

    def _measure(self, z: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        return z.float()


def all_layers(num_blocks: int, ios: Iterable[str] = ("in",)) -> list[LayerId]:
    """Every attention and MLP location of every block, in depth order."""
    return [LayerId(b, m, io) for b in range(num_blocks) for m in ("attn", "mlp") for io in ios]
