"""MASS's first pass: one forward through a fixed model that yields the final features and the
routing residuals at every probed location, and the files that hold them.

The fixed model is TSV-M (or theta_pre for proj_PRE). Its final features give TSV-M's logits and
the learned routers' inputs; its residuals at every block's attention/MLP input (Algorithm 2)
make every later choice of routing location, eta and top-k free. Each file format has its
writer beside its reader: :class:`FirstPassResult` (features + residuals per location) and
:class:`RoutingFeatures` (z_l at one location, the nn/mlp routers' input).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mass.data.store import make_loader, to_model_input
from mass.encoder import FeatureProbe, FirstPassProbe, ProbesRecorded
from mass.io import ArtifactError, load_arrays, save_arrays
from mass.svd import TaskComponents, components_per_task
from mass.task_vectors import LayerId, Location

_forwarded = 0


def count_forwarded(n: int) -> None:
    """Record ``n`` images sent once through an image tower (a full or a stopped forward, a first
    pass, a second pass through the image's own merge, or a training step)."""
    global _forwarded
    _forwarded += n


def log_images_forwarded() -> None:
    """A step's last log line: the images it forwarded (``workflow/scripts/plan.py`` predicts them)."""
    print(f"images forwarded: {_forwarded}", file=sys.stderr, flush=True)


class BatchRecorder(Protocol):
    """What :func:`encode` asks after each batch: the per-sample tensors the forward recorded (a probe's
    residuals, a MoErging model's voted heads), keyed by name."""

    def pop(self) -> dict[str, torch.Tensor]: ...


@torch.no_grad()
def encode(visual: nn.Module, images: np.ndarray, image_size: int, batch_size: int = 256,
           device: str | torch.device = "cpu", workers: int | None = None, desc: str | None = None,
           probe: BatchRecorder | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image features of ``visual`` (N x d, float32 on CPU) and, with a probe, what it recorded per sample
    (e.g. :class:`mass.encoder.FirstPassProbe`: residuals), concatenated over the batches.

    A stopping probe ends each forward at its deepest location: then no features (empty tensor).
    """
    visual.eval()
    feats, recorded = [], []
    loader = make_loader(images, batch_size=batch_size, workers=workers, device=device)
    for batch in tqdm(loader, desc=desc, disable=desc is None, leave=False):
        count_forwarded(len(batch))
        try:
            feats.append(visual(to_model_input(batch, image_size, device)).float().cpu())
        except ProbesRecorded:
            pass
        if probe is not None:
            recorded.append(probe.pop())
    residuals = {k: torch.cat([r[k] for r in recorded]) for k in recorded[0]} if recorded else {}
    return (torch.cat(feats) if feats else torch.empty(0)), residuals


def layer_bases(components: Sequence[TaskComponents], layers: Sequence[LayerId],
                num_tasks: int) -> dict[LayerId, torch.Tensor]:
    """(T, D, k) orthonormal bases per layer: V of the module's first matrix for inputs, U of
    its last matrix for outputs, truncated to the benchmark's k = floor(r / T)."""
    bases = {}
    for layer in layers:
        parts = []
        for comp in components:
            lr = comp.matrices[layer.basis_key]
            k = components_per_task(min(lr.U.shape[0], lr.V.shape[0]), num_tasks)
            parts.append((lr.V if layer.io == "in" else lr.U)[:, :k].float())
        bases[layer] = torch.stack(parts)
    return bases


def first_pass(visual: nn.Module, images: np.ndarray, image_size: int,
               bases: Mapping[LayerId, torch.Tensor], tokens: Sequence[str] = ("cls",),
               batch_size: int = 256, device: str | torch.device = "cpu", workers: int | None = None,
               desc: str | None = None, routing_only: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Features and residuals (key "<block>.<module>.<io>.<token>" -> N x T) in one pass.

    ``routing_only`` stops every forward after the deepest probed location (features empty):
    enough for MASS inference, which needs only the routing layer's residuals.
    """
    device_bases = {layer: b.to(device) for layer, b in bases.items()}
    with FirstPassProbe(visual, device_bases, tokens, stop=routing_only) as probe:
        return encode(visual, images, image_size, batch_size, device, workers, desc, probe)


def layer_features(visual: nn.Module, images: np.ndarray, image_size: int, layer: LayerId, token: str = "cls",
                   batch_size: int = 256, device: str | torch.device = "cpu", workers: int | None = None,
                   desc: str | None = None) -> torch.Tensor:
    """z_l: the ``token`` representation at ``layer`` (N x D), forwarding only up to that layer."""
    with FeatureProbe(visual, [layer], (token,), stop=True) as probe:
        _, recorded = encode(visual, images, image_size, batch_size, device, workers, desc, probe)
    return recorded.get(Location(layer, token), torch.empty(0))


@dataclass
class FirstPassResult:
    """What the first pass stored for one split: final features, residuals per location, owners."""

    features: torch.Tensor
    residuals: dict[Location, torch.Tensor]  # a string only in the file: "res:<block>.<module>.<io>.<token>"
    task: torch.Tensor
    labels: torch.Tensor

    def save(self, path: str) -> None:
        save_arrays(path, features=self.features.numpy(), task=self.task.numpy(), labels=self.labels.numpy(),
                    **{f"res:{k}": v.numpy().astype(np.float32) for k, v in self.residuals.items()})

    @classmethod
    def load(cls, path: str) -> FirstPassResult:
        arrays = load_arrays(path)
        try:
            residuals = {Location.parse(k[len("res:"):]): torch.from_numpy(v)
                         for k, v in arrays.items() if k.startswith("res:")}
            return cls(torch.from_numpy(arrays["features"]), residuals, torch.from_numpy(arrays["task"]),
                       torch.from_numpy(arrays["labels"]))
        except KeyError as err:
            raise ArtifactError(f"{path} lacks {err}; delete it and rerun the first-pass rule") from err

    def residuals_at(self, location: Location) -> torch.Tensor:
        """Residuals at ``location``; a location the first pass did not record fails saying why:
        a block the model does not have, or an io/token the config left out."""
        if location not in self.residuals:
            raise ArtifactError(self._not_recorded(location))
        return self.residuals[location]

    def _not_recorded(self, location: Location) -> str:
        blocks = sorted({loc.layer.block for loc in self.residuals})
        ios, tokens = sorted({loc.layer.io for loc in self.residuals}), sorted({loc.token for loc in self.residuals})
        recorded = (f"blocks {blocks[0]}-{blocks[-1]}, ios {ios}, tokens {tokens}" if blocks
                    else "no location")
        key = str(location)
        block, io, token = location.layer.block, location.layer.io, location.token
        if blocks and block not in blocks:
            return (f"location {key!r}: block {block} does not exist in this model (the first pass recorded "
                    f"{recorded}); set routing.layer to a block in {blocks[0]}-{blocks[-1]}, or 'auto'")
        return (f"the first pass did not record location {key!r} (it recorded {recorded}); add "
                f"{io!r} to first_pass.ios and {token!r} to first_pass.tokens in the config")


@dataclass
class RoutingFeatures:
    """z_l of the validation and test images at one routing location (the ``routing_features`` step)."""

    location: Location
    z: dict[str, torch.Tensor]
    task: dict[str, torch.Tensor]

    def save(self, path: str) -> None:
        save_arrays(path, layer=np.array(str(self.location.layer)), token=np.array(self.location.token),
                    **{f"z_{s}": z.numpy() for s, z in self.z.items()},
                    **{f"task_{s}": t.numpy() for s, t in self.task.items()})

    @classmethod
    def load(cls, path: str) -> RoutingFeatures:
        arrays = load_arrays(path)
        try:
            return cls(Location(LayerId.parse(str(arrays["layer"])), str(arrays["token"])),
                       {s: torch.from_numpy(arrays[f"z_{s}"]) for s in ("val", "test")},
                       {s: torch.from_numpy(arrays[f"task_{s}"]) for s in ("val", "test")})
        except KeyError as err:
            raise ArtifactError(f"{path} lacks {err}; delete it and rerun the routing_features rule") from err

    def check(self, path: str, location: Location, task: dict[str, torch.Tensor]) -> None:
        """Fail, naming the file, when it holds another location's z_l or other samples."""
        if self.location != location:
            raise ArtifactError(f"{path} holds z_l at {self.location}, not at {location}; "
                                "delete it and rerun the routing_features rule")
        for split, owners in task.items():
            if not torch.equal(self.task[split], owners):
                raise ArtifactError(f"{path} was made for other {split} samples; "
                                    "delete it and rerun the routing_features rule")
