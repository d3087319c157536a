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

``repo`` is the configured ``sources.finetuned_repo``: the repository itself (tall_masks) or the
owner of the per-task repositories (crisostomi). ``model_dir`` is the backbone's spelling in the
source (``sources.finetuned_model_dirs``; tall_masks spells ``VIT-B-16``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HubFile:
    """One file of a hub model repository."""

    repo: str
    filename: str


@dataclass(frozen=True)
class CheckpointLayout:
    """How one source names its files: templates of repository and file names, filled with ``repo``
    (the configured repository or owner), ``model`` (the backbone as the source spells it) and ``task``.
    ``head_file`` is None for a source that publishes no heads; ``listed`` is the (prefix, suffix) of the
    file names kept with each repository's pin in the lock file (tall_masks spells its folders
    inconsistently, so files are found case-insensitively in that listing without asking the hub again).
    """

    name: str
    finetuned_repo: str
    finetuned_file: str
    zeroshot_repo: str
    zeroshot_file: str
    head_file: str | None
    listed: tuple[str, str]

    @property
    def publishes_heads(self) -> bool:
        return self.head_file is not None

    def finetuned(self, repo: str, model: str, task: str) -> HubFile:
        fill = {"repo": repo, "model": model, "task": task}
        return HubFile(self.finetuned_repo.format(**fill), self.finetuned_file.format(**fill))

    def zeroshot(self, repo: str, model: str) -> HubFile:
        fill = {"repo": repo, "model": model}
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
)}


def layout(name: str) -> CheckpointLayout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {name!r}: sources.finetuned_layout takes one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]
