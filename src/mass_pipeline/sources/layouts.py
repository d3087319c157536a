"""Where a source of fine-tuned checkpoints keeps its files: one :class:`CheckpointLayout` per source.

* ``tall_masks``: the checkpoints of the first edition, one repository (``nik-dim/tall_masks``)
  holding ``single_task/<model>/<Task>Val/nonlinear_finetuned.pt`` per task, the zero-shot encoder
  the fine-tunes started from (``single_task/<model>/MNISTVal/nonlinear_zeroshot.pt``) and the
  pickled heads they were trained against (``single_task/<model>/head_<Task>Val.pt``).
* ``crisostomi``: the final edition's re-fine-tuned encoders, one repository per backbone and task,
  ``<owner>/<model>-<Task>``, each with one ``pytorch_model.bin`` (a torch-saved state dict of the
  code's ``ImageEncoder``: an open_clip CLIP without its text transformer, keys prefixed ``model.``),
  and the base encoder at ``<owner>/<model>-base`` (``load_model_from_hf`` and
  ``upload_model_to_hf`` in ``src/mass/utils/io_utils.py`` of crisostomi/mass at 702177e). No heads
  are published: the final code builds them from text (tests/fixtures/sources/crisostomi.json).
* ``fusionbench``: FusionBench's fine-tuned CLIP models, one repository per backbone and task,
  ``tanganke/clip-vit-<model>_<task>`` with FusionBench's spellings of both (``base-patch32``,
  ``stanford-cars``), each a transformers ``CLIPVisionModel`` in ``model.safetensors`` without the
  projection (only the vision model was fine-tuned: the pretrained projection is taken from theta_pre,
  :mod:`mass.hf_vision`). No heads and no base encoder are fetched: heads are built from text, and theta_pre
  is the backbone's OpenAI weights, which FusionBench's base ``openai/clip-vit-<model>`` holds in
  transformers' layout. Its EMNIST model is EMNIST *letters* (26 classes), not the paper's EMNIST digits:
  it is the encoder of the catalog's EMNISTLetters, while the paper's EMNIST has no FusionBench encoder
  and is fine-tuned (tests/fixtures/sources/fusionbench.json).

``repo`` is the configured ``sources.finetuned_repo``: the repository itself (tall_masks) or the
owner of the per-task repositories (crisostomi). ``model_dir`` is the backbone's spelling in the
source (``sources.finetuned_model_dirs``; tall_masks spells ``VIT-B-16``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HubFile:
    """One file of a hub model repository."""

    repo: str
    filename: str


@dataclass(frozen=True)
class CheckpointLayout:
    """How one source names its files: templates of repository and file names, filled with ``repo``
    (the configured repository or owner), ``model`` (the backbone as the source spells it: ``model_names``, or
    the name given) and ``task`` (``task_names`` where the source spells tasks its own way; None: every task as
    the catalog spells it). ``head_file`` is None for a source that publishes no heads, ``zeroshot_file`` for
    one whose base is not fetched; ``needs_projection``: its encoders lack the output projection, which
    theta_pre gives. ``listed`` is the (prefix, suffix) of the
    file names kept with each repository's pin in the lock file (tall_masks spells its folders
    inconsistently, so files are found case-insensitively in that listing without asking the hub again).
    """

    name: str
    finetuned_repo: str
    finetuned_file: str
    zeroshot_repo: str
    zeroshot_file: str | None
    head_file: str | None
    listed: tuple[str, str]
    model_names: Mapping[str, str] = field(default_factory=dict)
    task_names: Mapping[str, str] | None = None
    needs_projection: bool = False

    @property
    def publishes_heads(self) -> bool:
        return self.head_file is not None

    @property
    def publishes_zeroshot(self) -> bool:
        return self.zeroshot_file is not None

    def has_task(self, task: str) -> bool:
        return self.task_names is None or task in self.task_names

    def finetuned(self, repo: str, model: str, task: str) -> HubFile:
        if not self.has_task(task):
            raise ValueError(f"the {self.name} source has no encoder for {task} (it has {sorted(self.task_names)}): "
                             f"add {task} to finetuned.refinetune to fine-tune it here")
        fill = {"repo": repo, "model": self.model_names.get(model, model),
                "task": task if self.task_names is None else self.task_names[task]}
        return HubFile(self.finetuned_repo.format(**fill), self.finetuned_file.format(**fill))

    def zeroshot(self, repo: str, model: str) -> HubFile:
        if self.zeroshot_file is None:
            raise ValueError(f"the {self.name} source's base encoder is not fetched: theta_pre is the backbone's own")
        fill = {"repo": repo, "model": self.model_names.get(model, model)}
        return HubFile(self.zeroshot_repo.format(**fill), self.zeroshot_file.format(**fill))

    def head(self, repo: str, model: str, task: str) -> HubFile:
        if self.head_file is None:
            raise ValueError(f"the {self.name} source publishes no heads: they are built from text")
        return HubFile(repo, self.head_file.format(repo=repo, model=model, task=task))

    def keeps_in_listing(self, name: str) -> bool:
        return name.startswith(self.listed[0]) and name.endswith(self.listed[1])


LAYOUTS: dict[str, CheckpointLayout] = {c.name: c for c in (
    CheckpointLayout("tall_masks", "{repo}", "single_task/{model}/{task}Val/nonlinear_finetuned.pt",
                     "{repo}", "single_task/{model}/MNISTVal/nonlinear_zeroshot.pt",
                     "single_task/{model}/head_{task}Val.pt", listed=("single_task/", ".pt")),
    CheckpointLayout("crisostomi", "{repo}/{model}-{task}", "pytorch_model.bin",
                     "{repo}/{model}-base", "pytorch_model.bin", None, listed=("", "pytorch_model.bin")),
    # spellings: tanganke/fusion_bench config/modelpool/CLIPVisionModelPool/clip-vit-*_TALL20_model_only.yaml
    # (tests/fixtures/sources/fusionbench.json); EMNIST (digits) left out: FusionBench's is EMNISTLetters
    CheckpointLayout("fusionbench", "{repo}/clip-vit-{model}_{task}", "model.safetensors", "", None, None,
                     listed=("", "model.safetensors"),
                     model_names={"ViT-B-32": "base-patch32", "ViT-B-16": "base-patch16", "ViT-L-14": "large-patch14"},
                     task_names={"SUN397": "sun397", "Cars": "stanford-cars", "RESISC45": "resisc45",
                                 "EuroSAT": "eurosat", "SVHN": "svhn", "GTSRB": "gtsrb", "MNIST": "mnist", "DTD": "dtd",
                                 "Flowers102": "oxford_flowers102", "PCAM": "pcam", "FER2013": "fer2013",
                                 "OxfordIIITPet": "oxford-iiit-pet", "STL10": "stl10", "CIFAR100": "cifar100",
                                 "CIFAR10": "cifar10", "Food101": "food101", "FashionMNIST": "fashion_mnist",
                                 "KMNIST": "kmnist", "RenderedSST2": "rendered-sst2",
                                 "EMNISTLetters": "emnist_letters"},
                     needs_projection=True),
)}


def layout(name: str) -> CheckpointLayout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {name!r}: sources.finetuned_layout takes one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]
