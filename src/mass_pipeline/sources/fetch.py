"""Fetch the pipeline's external inputs and store them in its own safe formats.

Each fetch downloads through :mod:`mass_pipeline.sources.download` (resumable, verified, lock-pinned); the
steps ``download_dataset``, ``download_own_task``, ``fetch_pretrained``, ``fetch_finetuned`` and ``check_head`` call
them:

* :func:`fetch_dataset`: a task's hub parquet files (train and test splits, see :mod:`mass_pipeline.data.catalog`)
  into ``--out``, plus ``manifest.json`` (written last) for :mod:`mass_pipeline.data.prepare`;
  :func:`fetch_declared_dataset` the same for a task declared from a hub dataset
  (:mod:`mass_pipeline.data.own_tasks`), both through :func:`fetch_parquet_splits`.
* :func:`fetch_pretrained`: OpenAI CLIP as open_clip builds it -> full CLIP state dict (safetensors). A
  file already on disk is used as is: ``from_file``, or the open_clip / Hugging Face cache.
* :func:`fetch_finetuned`: a published fine-tuned image encoder (where each source keeps it:
  :mod:`mass_pipeline.sources.layouts`) -> visual-relative state dict (safetensors).
* :func:`fetch_head`: a published classification head (``single_task/<model>/head_<Task>Val.pt``) ->
  ``{"weight": classes x d}`` (safetensors); with ``compare_with``, also a JSON report of how
  well the pipeline's head, rebuilt from text, agrees with it.

The published ``.pt`` files are pickles, and unpickling runs code named in the file. They are
loaded with ``torch.load(weights_only=True)``; a file that pickles whole modules (the heads)
is read by a restricted unpickler instead, which rebuilds tensors and containers only and turns
module classes of torch / open_clip / the task-vector code into inert placeholders whose
tensors are then collected; any other class or function in the file is refused. A file that
cannot be unpickled at all is reported as corrupt (delete it and rerun), not as refused.

Every download is format-checked before it is pinned in the lock file: a parquet file must open
and have the task's image and label columns; a checkpoint must load as tensors and convert (an
image encoder of the model's shapes, a head with a 2-D weight, a CLIP open_clip loads). The
check runs on the downloaded ``.part`` file (and on a file the user placed), so a bad download
is deleted and never recorded, and the conversion reuses what the check loaded.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import re
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import torch

from mass.hf_vision import from_transformers, is_transformers_layout
from mass.io import ArtifactError, load_tensors, save_tensors, write_json
from mass.task_vectors import visual_state_dict
from mass_pipeline.data import catalog
from mass_pipeline.sources import layouts
from mass_pipeline.sources.download import HubRepo, LockFile, download, download_hub_file, is_commit, resolve_revision
from mass_pipeline.sources.layouts import CheckpointLayout, HubFile

if TYPE_CHECKING:  # its images' decoding (PIL, torchvision) is not needed to download
    from mass_pipeline.data.own_tasks import OwnTask

# --------------------------------------------------------------------------- safe unpickling

_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
# Code that defined the pickled modules: its classes and functions become inert placeholders.
_PLACEHOLDER_PREFIXES = ("torch.nn.modules.", "open_clip.", "src.", "modeling", "heads", "torchvision.transforms.")


class Placeholder:
    """Inert stand-in for a pickled class or function: records what it was given, runs nothing."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value


class _Refused(pickle.UnpicklingError):
    """A well-formed pickle names a class or function the restricted unpickler does not allow."""


_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class _RestrictedUnpickler(pickle.Unpickler):
    _placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if not (_DOTTED.match(module) and _DOTTED.match(name)):  # bytes of a damaged file read as a name
            raise pickle.UnpicklingError(f"damaged global name {module!r}.{name!r}")
        module = "builtins" if module == "__builtin__" else module
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_PLACEHOLDER_PREFIXES):
            key = (module, name)
            if key not in self._placeholders:
                self._placeholders[key] = type(name, (Placeholder,), {"qualname": f"{module}.{name}"})
            return self._placeholders[key]
        raise _Refused(f"refusing to load {module}.{name}: only tensors, containers and module "
                       "classes of torch/open_clip/the task-vector code are allowed")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


_RESTRICTED_PICKLE = types.SimpleNamespace(__name__="mass_restricted_pickle", Unpickler=_RestrictedUnpickler,
                                           load=_restricted_load)


def _corrupt(path: str | os.PathLike, err: BaseException) -> ArtifactError:
    return ArtifactError(f"{path} is corrupt or not a torch checkpoint ({type(err).__name__}: {err}); delete it and "
                         "rerun (the rule downloads it again, checked against the pinned sha256)")


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a torch checkpoint without executing code from it (see the module docstring)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # not a plain state dict (e.g. a pickled module, or damaged): retry with the restricted unpickler
    except Exception as err:  # noqa: BLE001  (zip, decoding or tensor errors of a damaged file)
        raise _corrupt(path, err) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
    except _Refused as err:
        raise ArtifactError(f"{path}: {err}. The file was not loaded; if you trust it, convert it to a state dict "
                            "yourself (torch.save(obj.state_dict())) and place that file there instead.") from err
    except Exception as err:  # noqa: BLE001  (anything else: the pickle itself is damaged)
        raise _corrupt(path, err) from err


def read_encoder(path: str | os.PathLike, projection: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """An image encoder in any layout the sources publish, as open_clip's ``visual`` state dict: a torch
    checkpoint (open_clip CLIP or image tower, the task-vector code's pickled ``ImageEncoder``, the final
    code's ``ImageEncoder`` state dict) or a safetensors file, each possibly a transformers CLIP
    (``CLIPVisionModel`` / ``CLIPModel``: :mod:`mass.hf_vision`; ``projection`` for one without its own)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise _corrupt(path, err) from err
    else:
        state = state_dict_of(safe_torch_load(path), path)
    if is_transformers_layout(state):
        try:
            return from_transformers(state, projection)
        except ValueError as err:
            raise ArtifactError(f"{path}: {err}") from err
    return visual_state_dict(state)


def state_dict_of(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a (nested ``state_dict``) mapping, or a module placeholder
    whose ``_parameters``/``_buffers``/``_modules`` are walked like ``nn.Module.state_dict``."""
    if isinstance(obj, Mapping):
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return {k: v.detach() for k, v in obj.items()}
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, Placeholder):
        out: dict[str, torch.Tensor] = {}
        _collect(obj, "", out, path)
        if out:
            return out
    raise ArtifactError(f"{path} holds no state dict (found {type(obj).__name__})")


def _collect(module: Placeholder, prefix: str, out: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    state = module.state
    if not isinstance(state, dict) or "_parameters" not in state:
        raise ArtifactError(f"{path}: {module.qualname} at {prefix or '<root>'} is not a pickled torch module")
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, tensor in state["_parameters"].items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    for name, tensor in state.get("_buffers", {}).items():
        if tensor is not None and name not in skip:
            out[prefix + name] = tensor.detach()
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out, path)


# --------------------------------------------------------------------------- subcommands


def fetch_dataset(task: str, out: str | os.PathLike, lock: LockFile, repo: str | None = None,
                  revision: str | None = None, endpoint: str | None = None, **download_kwargs: Any) -> dict:
    """Download a task's train/test parquet files into ``out`` and write ``out/manifest.json``."""
    src = catalog.source(task, repo, revision)
    requested = src.revision or src.ref
    commit, splits = fetch_parquet_splits(HubRepo(src.repo, "dataset"), requested, Path(out), lock, src.split_files,
                                          parquet_check((src.image_column, src.label_column)), endpoint,
                                          **download_kwargs)
    return write_manifest(out, task, src.repo, requested, commit, splits)


def fetch_declared_dataset(task: OwnTask, out: str | os.PathLike, lock: LockFile, endpoint: str | None = None,
                           **download_kwargs: Any) -> dict:
    """Download a declared task's hub dataset (``tasks.<name>.hub``) as :func:`fetch_dataset` downloads the
    catalog's, and write ``out/manifest.json``.

    The download's format check only opens each file: a file without the configured columns is still the
    hub's file at that commit (its sha256 is the hub's), so it is kept and pinned, and the check after it
    (:meth:`mass_pipeline.data.own_tasks.HubDataset.check_columns`) names the key to fix; a rerun with the
    key fixed then downloads nothing again.
    """
    out, hub = Path(out), task.hub
    commit, splits = fetch_parquet_splits(HubRepo(hub.repo, "dataset"), hub.revision, out, lock,
                                          lambda files: hub.split_files(task.name, files), parquet_check(()),
                                          endpoint, **download_kwargs)
    for name in (n for names in splits.values() for n in names):
        hub.check_columns(task.name, out / name)
    return write_manifest(out, task.name, hub.repo, hub.revision, commit, splits)


def fetch_parquet_splits(repo: HubRepo, revision: str | None, out: Path, lock: LockFile,
                         select: Callable[[Iterable[str]], dict[str, list[str]]], check: Callable[[Path], None],
                         endpoint: str | None = None, **download_kwargs: Any) -> tuple[str, dict[str, list[str]]]:
    """Pin ``revision`` of a hub dataset (the parquet files of its listing kept in the lock), download the files
    ``select`` picks for each split into ``out``, each verified and format-checked (``check``); return the
    commit and the files per split. What the catalog's tasks and the declared hub tasks share."""
    snapshot = resolve_revision(repo, revision, lock, endpoint=endpoint,
                                keep_listing=lambda name: name.endswith(".parquet"))
    splits = select(snapshot.files)
    for names in splits.values():
        for name in names:
            download_hub_file(snapshot, name, out / name, lock, endpoint=endpoint, check=check, **download_kwargs)
    return snapshot.commit, splits


def write_manifest(out: str | os.PathLike, task: str, repo: str, revision: str, commit: str,
                   splits: Mapping[str, list[str]]) -> dict:
    """``out/manifest.json``, written last: what preparation reads the downloaded files by."""
    manifest = {"task": task, "repo": repo, "revision": revision, "commit": commit, "splits": dict(splits)}
    write_json(Path(out) / "manifest.json", manifest)
    return manifest


def parquet_check(columns: tuple[str, ...]) -> Callable[[Path], None]:
    """Format check of a dataset file: it opens as parquet (a transfer cut short has no footer),
    has ``columns``, and the last of them (the labels) decodes; no ``columns``: it opens."""
    def check(path: Path) -> None:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ArtifactError(f"parquet file without column(s) {missing} (columns: {names})")
        if columns:
            parquet.read(columns=[columns[-1]])
    return check


def _hub_checkpoint(file: HubFile, layout: CheckpointLayout, revision: str | None, lock: LockFile, raw: Path,
                    endpoint: str | None, **download_kwargs: Any) -> bool:
    """Make ``raw`` the verified hub file (``check``, in ``download_kwargs``: its conversion, run
    before it is pinned); True if it was downloaded now (not already on disk)."""
    repo, filename = file.repo, file.filename
    existed = raw.exists()
    hub = HubRepo(repo)
    if existed and revision and is_commit(revision) and lock.file(hub.file_key(revision, filename)):
        # placed on disk, its commit and checksum known: verified (and converted) here, with no network
        download(hub.file_url(revision, filename, endpoint), raw, lock=lock, key=hub.file_key(revision, filename),
                 **download_kwargs)
        return False
    snapshot = resolve_revision(hub, revision, lock, endpoint=endpoint, keep_listing=layout.keeps_in_listing)
    if snapshot.files and snapshot.find(filename) not in snapshot.files:
        raise ArtifactError(f"{repo} at commit {snapshot.commit} has no file {filename} (case-insensitive); its "
                            f"listing in {lock.path} has e.g. {sorted(snapshot.files)[:4]}. Set "
                            "sources.finetuned_model_dirs.<backbone> to the repository's folder name.")
    download_hub_file(snapshot, filename, raw, lock, endpoint=endpoint, **download_kwargs)
    return not existed


def check_visual(model: str, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse tensors that are not an image encoder of ``model``'s names and shapes, naming the file."""
    from mass.encoder import create_clip

    reference = create_clip(model, device="meta").visual.state_dict()  # shapes only, no random initialisation
    missing = sorted(set(reference) - set(tensors))
    unexpected = sorted(set(tensors) - set(reference))
    wrong = sorted(k for k in set(reference) & set(tensors) if reference[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise ArtifactError(f"{path} is not a {model} image encoder: missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}, wrong shapes {wrong[:3]}; check --model and the file")


def fetch_finetuned(model: str, task: str, repo: str, out: str | os.PathLike, lock: LockFile,
                    revision: str | None = None, endpoint: str | None = None, raw: str | os.PathLike | None = None,
                    keep_raw: bool = False, hub_model_dir: str | None = None, layout: str = "tall_masks",
                    projection: torch.Tensor | None = None, **download_kwargs: Any) -> None:
    """Published fine-tuned encoder of ``task`` -> visual-relative safetensors at ``out``; ``layout``
    names where the source keeps it (:mod:`mass_pipeline.sources.layouts`); ``projection``: theta_pre's, for a
    source whose encoders have none (:func:`read_encoder`)."""
    out = Path(out)
    source = layouts.layout(layout)
    file = source.finetuned(repo, hub_model_dir or model, task)
    # the download keeps the source's suffix (read_encoder tells safetensors from pickles by it), beside ``out``
    safetensors = Path(file.filename).suffix == ".safetensors"
    raw = Path(raw) if raw else out.with_suffix(".hub.safetensors" if safetensors else ".pt")
    converted: dict[str, Any] = {}

    def convert(path: Path) -> None:
        tensors = read_encoder(path, projection)
        check_visual(model, tensors, path)
        converted["tensors"] = tensors

    downloaded = _hub_checkpoint(file, source, revision, lock, raw, endpoint, check=convert, **download_kwargs)
    tensors = converted["tensors"]
    save_tensors(out, tensors, {"model": model, "task": task, "source": f"{file.repo}/{file.filename}"})
    if downloaded and not keep_raw:
        raw.unlink()


def fetch_head(model: str, task: str, repo: str, out: str | os.PathLike, lock: LockFile,
               revision: str | None = None, endpoint: str | None = None, raw: str | os.PathLike | None = None,
               keep_raw: bool = False, hub_model_dir: str | None = None, compare_with: str | os.PathLike | None = None,
               report: str | os.PathLike | None = None, **download_kwargs: Any) -> None:
    """Published classification head of ``task`` -> ``{"weight": classes x d}`` safetensors at ``out``.

    The pipeline's heads are bias-free and applied to L2-normalised features (as the published
    heads are); a head that differs is refused rather than silently changed. ``compare_with``
    (a head built by the pipeline) writes :func:`compare_heads` to ``report``.
    """
    out = Path(out)
    raw = Path(raw) if raw else out.with_suffix(".pt")
    source = layouts.layout("tall_masks")  # the only source that publishes heads
    file = source.head(repo, hub_model_dir or model, task)
    filename = file.filename
    converted: dict[str, Any] = {}
    downloaded = _hub_checkpoint(file, source, revision, lock, raw, endpoint,
                                 check=lambda path: converted.update(weight=head_weight(path)), **download_kwargs)
    weight = converted["weight"]
    save_tensors(out, {"weight": weight}, {"model": model, "task": task, "source": f"{repo}/{filename}"})
    if downloaded and not keep_raw:
        raw.unlink()
    if compare_with is not None:
        agreement = compare_heads(weight, load_tensors(compare_with)["weight"], compare_with)
        write_json(report, {"task": task, "model": model, "published": f"{repo}/{filename}",
                            "built": str(compare_with), **agreement})


def head_weight(path: Path) -> torch.Tensor:
    """The ``weight`` of a published classification head file, checked to be what the pipeline uses."""
    obj = safe_torch_load(path)
    tensors = state_dict_of(obj, path)
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or weight.ndim != 2:
        raise ArtifactError(f"{path} has no 2-D 'weight' (keys: {sorted(tensors)}); it is not a classification head")
    if bias is not None and bool(bias.abs().max() > 0):
        raise ArtifactError(f"{path} has a non-zero bias, but the pipeline's heads are bias-free")
    if isinstance(obj, Placeholder) and isinstance(obj.state, dict) and obj.state.get("normalize") is False:
        raise ArtifactError(f"{path} is a head without input normalisation; the pipeline's heads normalise features")
    return weight


def compare_heads(published: torch.Tensor, built: torch.Tensor, path: str | os.PathLike) -> dict[str, Any]:
    """How well a head rebuilt from text agrees with the published one, class by class.

    Both are (classes x d) matrices of scaled unit rows, so the per-class cosine says whether the
    same class names and templates were used; ``same_order`` whether each row is closest to the
    published row of the same index (else the label order differs). A shape mismatch means a
    different class list or backbone and is an error.
    """
    if published.shape != built.shape:
        raise ArtifactError(f"{path}: the published head is {tuple(published.shape)}, the pipeline's "
                            f"{tuple(built.shape)}; the class list or the backbone differs")
    similarity = (torch.nn.functional.normalize(published.double(), dim=1)
                  @ torch.nn.functional.normalize(built.double(), dim=1).T)
    own = similarity.diagonal()
    return {"classes": len(own), "min_cosine": float(own.min()), "mean_cosine": float(own.mean()),
            "least_similar_class": int(own.argmin()),
            "same_order": bool((similarity.argmax(dim=1) == torch.arange(len(own))).all())}


def fetch_pretrained(model: str, out: str | os.PathLike, lock: LockFile | None = None,
                     from_file: str | os.PathLike | None = None, repo: str | None = None,
                     filename: str | None = None, revision: str | None = None, endpoint: str | None = None,
                     cache_dir: str | None = None, raw: str | os.PathLike | None = None, keep_raw: bool = False,
                     zeroshot_repo: str | None = None, zeroshot_revision: str | None = None,
                     hub_model_dir: str | None = None, report: str | os.PathLike | None = None,
                     zeroshot_layout: str = "tall_masks", **download_kwargs: Any) -> None:
    """OpenAI CLIP ``model`` as open_clip builds it -> full CLIP state dict (safetensors) at ``out``.

    ``from_file`` (a state dict: safetensors or a weights-only ``.pt``) is used as is. Otherwise
    the weights come from the hub repository open_clip uses for ``pretrained="openai"`` (or
    ``repo``/``filename``), pinned in ``lock``: from the Hugging Face cache when already there,
    else downloaded to ``raw``. OpenAI's original ``.pt`` files are TorchScript archives, which
    cannot be loaded without running their code, so they are refused.

    ``zeroshot_repo`` (the fine-tuned checkpoints' repository, or owner, laid out as
    ``zeroshot_layout``): theta_pre is the image tower of the zero-shot checkpoint the fine-tunes
    started from, at the same revision (:func:`adopt_zeroshot`); the text
    tower stays the OpenAI one. ``report`` records which weights theta_pre is and, with
    ``zeroshot_repo``, their largest absolute difference to open_clip's copy.
    """
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    from mass.encoder import register_model_configs

    register_model_configs()
    out = Path(out)
    downloaded = False
    loaded: dict[str, Any] = {}

    def load_clip(file: Path) -> torch.nn.Module:
        try:
            return open_clip.create_model(model, pretrained=str(file), weights_only=True)
        except (RuntimeError, ValueError, KeyError, OSError, EOFError) as err:
            raise ArtifactError(f"{file} is not a {model} CLIP checkpoint open_clip can load ({err})") from err

    if from_file is not None:
        path = Path(from_file)
        if not path.is_file():
            raise ArtifactError(f"--from-file {path} does not exist")
    else:
        if lock is None:
            raise ArtifactError("fetching pretrained weights from the hub needs a lock file (--lock)")
        repo, candidates = _openai_weights(model, repo, filename)
        snapshot = resolve_revision(HubRepo(repo), revision, lock, endpoint=endpoint,
                                    keep_listing=lambda name: name in candidates)
        name = next((c for c in candidates if c in snapshot.files), candidates[0])
        cached = try_to_load_from_cache(repo, name, cache_dir=cache_dir, revision=snapshot.commit)
        default_raw = out.with_name(f"{out.stem}.hub{Path(name).suffix}")
        path = Path(cached) if isinstance(cached, str) else Path(raw) if raw else default_raw
        downloaded = not path.exists()
        download_hub_file(snapshot, name, path, lock, endpoint=endpoint,
                          check=lambda file: loaded.update(clip=load_clip(file)), **download_kwargs)
    state = (loaded["clip"] if "clip" in loaded else load_clip(path)).state_dict()
    source = f"{repo}/{name}@{snapshot.commit}" if from_file is None else str(path)
    meta = {"model": model, "pretrained": "openai", "source": source}
    result: dict[str, Any] = {"model": model, "theta_pre": source, "text_tower": source}
    if zeroshot_repo is not None:
        if lock is None:
            raise ArtifactError("theta_pre from the fine-tuned checkpoints' repository needs a lock file (--lock)")
        origin, difference = adopt_zeroshot(model, state, zeroshot_repo, lock, zeroshot_revision, endpoint,
                                            hub_model_dir, out.with_name(f"{out.stem}.zeroshot.pt"), keep_raw,
                                            layout=zeroshot_layout, **download_kwargs)
        meta["visual_source"] = origin
        result.update(theta_pre=origin, compared_with=source, **difference)
    save_tensors(out, state, meta)
    if report is not None:
        write_json(report, result)
    if downloaded and not keep_raw:
        path.unlink()


def adopt_zeroshot(model: str, state: dict[str, torch.Tensor], repo: str, lock: LockFile, revision: str | None,
                   endpoint: str | None, hub_model_dir: str | None, raw: Path, keep_raw: bool = False,
                   layout: str = "tall_masks", **download_kwargs: Any) -> tuple[str, dict[str, Any]]:
    """Replace the image tower of a full CLIP state dict (in place) by the authors' zero-shot encoder.

    The published fine-tunes started from the source's zero-shot encoder (tall_masks:
    ``single_task/<model>/MNISTVal/nonlinear_zeroshot.pt`` of the same repository; crisostomi:
    ``<owner>/<model>-base``, uploaded from that same file), open_clip 2.x's copy of the OpenAI
    weights; task vectors must be taken against exactly those weights. Returns where they came from
    and the largest absolute difference to the tensors they replace (open_clip's hub copy), recorded
    once per run.
    """
    source = layouts.layout(layout)
    file = source.zeroshot(repo, hub_model_dir or model)
    repo, filename = file.repo, file.filename
    if Path(filename).suffix == ".safetensors":  # read_encoder tells safetensors from pickles by the suffix
        raw = raw.with_suffix(".safetensors")
    snapshot = resolve_revision(HubRepo(repo), revision, lock, endpoint=endpoint, keep_listing=source.keeps_in_listing)
    ours = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    converted: dict[str, Any] = {}

    def convert(path: Path) -> None:
        visual = read_encoder(path, ours.get("proj"))
        missing, unexpected = sorted(set(ours) - set(visual)), sorted(set(visual) - set(ours))
        wrong = sorted(k for k in set(ours) & set(visual) if ours[k].shape != visual[k].shape)
        if missing or unexpected or wrong:
            raise ArtifactError(f"{path} is not a {model} image encoder: missing {missing[:3]}, unexpected "
                                f"{unexpected[:3]}, wrong shapes {wrong[:3]}")
        converted["visual"] = visual

    downloaded = _hub_checkpoint(file, source, revision, lock, raw, endpoint, check=convert, **download_kwargs)
    visual = converted["visual"]
    gaps = {k: float((visual[k].double() - ours[k].double()).abs().max()) if ours[k].numel() else 0.0 for k in ours}
    largest = max(gaps, key=gaps.get)
    for key, tensor in visual.items():
        state[f"visual.{key}"] = tensor.to(state[f"visual.{key}"].dtype).contiguous()
    if downloaded and not keep_raw:
        raw.unlink()
    origin = f"{repo}/{snapshot.find(filename)}@{snapshot.commit}"
    return origin, {"max_abs_difference": gaps[largest], "largest_difference_tensor": f"visual.{largest}",
                    "tensors_compared": len(gaps)}


def _openai_weights(model: str, repo: str | None, filename: str | None) -> tuple[str, list[str]]:
    """Hub repository and candidate file names (safetensors first) of open_clip's ``openai`` weights."""
    import open_clip

    if repo:
        return repo, [filename or "open_clip_model.safetensors"]
    hub = open_clip.get_pretrained_cfg(model, "openai").get("hf_hub", "")
    if not hub:
        raise ArtifactError(f"open_clip has no hub copy of OpenAI weights for {model}; pass --repo/--filename "
                            "or --from-file")
    repo, name = posixpath.split(hub)
    return repo, [name] if name else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
