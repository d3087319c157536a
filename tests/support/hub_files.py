"""The dress rehearsal's hub: every file the paper configuration downloads, in its real layout and
format, at small size, generated from the per-source fixtures (``tests/fixtures/sources``).

* One dataset repository per catalog task, at its repository path, on its branch (FER2013's
  ``refs/convert/parquet``), with a parquet file per split shard named as the source names them,
  in the source's schema: split names (Food101's ``validation``, PCAM's ``valid``), image column
  as a ``{bytes, path}`` struct, label as the source types it (``ClassLabel`` with the hub's names
  in the hub's order in the ``huggingface`` schema metadata, PCAM's boolean, FER2013's and EMNIST's
  plain integers), images in the formats, modes and sizes the fixture records (RGB, L, CMYK JPEG,
  RGBA PNG, ...). A few images per split; a train split long enough for the catalog's carve-out
  (EuroSAT's fixed 2700).
* ``nik-dim/tall_masks``: ``single_task/<folder>/<Task>Val/nonlinear_finetuned.pt``, the zero-shot
  encoder and ``head_<Task>Val.pt`` per backbone, the folder spelled as the repository spells it
  (``ViT-B-32``, ``VIT-B-16``; ViT-L-14's spelling is unconfirmed, ``ViT-L-14`` here). Encoders are
  plain state dicts with ``model.visual.*`` plus the text keys the task-vector code's ImageEncoder
  keeps, of the real architecture (random weights; each task a different random task vector);
  heads are whole pickled ``src.models.modeling.ClassificationHead`` modules (``pickled_head``).
* open_clip's hub copy of the OpenAI weights, at the repository open_clip's pretrained table names.
* The TEXTSPAN description pool at its GitHub raw path (served with ``MASS_GITHUB_RAW``).

Adding a source is adding its fixture: everything here is read from it. A fact the generator needs
and the fixture lacks is taken from the catalog or a convention and reported in ``assumed`` (the
rehearsal prints it), so a file never silently matches the code instead of the source.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from support.hub import HubServer, pickled_head

from mass_pipeline.data import catalog

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"
# The ViT-L-14 folder of nik-dim/tall_masks was never read (tall_masks.json); this spelling is a guess.
VIT_L_14_FOLDER = "ViT-L-14"
_SHARD = re.compile(r"^(?P<split>.+?)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def facts(name: str) -> dict:
    data = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return {key: fact["value"] for key, fact in data.items()}


def commit_of(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()


# --------------------------------------------------------------------------- datasets


def split_paths(task: str, fact: dict, assumed: list[str]) -> dict[str, list[str]]:
    """Every split of the source -> its parquet files, as the source names them."""
    src = catalog.source(task)
    if "splits" in fact:
        splits = list(dict.fromkeys(fact["splits"].values()))
    else:
        splits = [src.train_split, src.test_split]
        assumed.append(f"split names {splits} (the catalog's)")
    listed: dict[str, list[str]] = {}
    for name in fact.get("files", []):
        match = _SHARD.match(posixpath.basename(name))
        split = match["split"] if match else posixpath.basename(posixpath.dirname(name))
        if match:  # every shard of the split, as the listed one numbers them
            folder, count = posixpath.dirname(name), int(match["count"])
            listed[split] = [posixpath.join(folder, f"{split}-{i:05d}-of-{count:05d}.parquet") for i in range(count)]
        else:
            listed.setdefault(split, []).append(name)
    folder = posixpath.dirname(next(iter(listed.values()))[0]) if listed else None
    out = {}
    for split in dict.fromkeys([*splits, *listed]):
        if split in listed:
            out[split] = listed[split]
        elif "layout" in fact:
            out[split] = [fact["layout"].format(split=split)]
        else:
            base = folder or src.data_dir or "data"
            out[split] = [f"{base}/{split}-00000-of-00001.parquet"]
            if folder is None:
                assumed.append(f"file {out[split][0]} (the datasets library's layout; the repository's files were "
                               "not read)")
    return out


def hub_names(task: str, fact: dict, label_type: str, assumed: list[str]) -> list[str] | None:
    """Class names of the source's ClassLabel, in its label order (None: a plain label)."""
    if label_type != "ClassLabel":
        return None
    if "hub_classnames" in fact:
        return list(fact["hub_classnames"])
    published = [c if isinstance(c, str) else c[0] for c in catalog.task_prompts(task)[0]]
    first = fact.get("hub_classnames_first", [])
    assumed.append(f"ClassLabel names: the published ones (the hub's {'first ' + str(len(first)) if first else 'none'}"
                   " read)")
    return list(first) + published[len(first):]


def draw(variant: dict, label: int, row: int, transpose: bool, seed: int) -> bytes:
    """One encoded image: the variant's format, mode and size; a digit-1 like stroke for label 1."""
    width, height = variant["size"]
    rng = np.random.default_rng([seed, row % 8, label])
    pixels = (rng.random((height, width)) * 60).astype(np.uint8)
    if label == 1:  # upright stroke (MNIST orientation): what EMNIST's orientation check looks at
        half = max(width // 14, 1)
        pixels[height // 6: height - height // 6, width // 2 - half: width // 2 + half] = 255
    else:
        pixels[height // 3: 2 * height // 3, width // 4: 3 * width // 4] = 40 + 20 * (label % 10)
    if transpose:
        pixels = np.ascontiguousarray(pixels.T)
    gray = Image.fromarray(pixels, "L")
    mode = variant["mode"]
    if mode == "L":
        image = gray
    else:
        rgb = Image.merge("RGB", (gray, gray.point(lambda v: 255 - v), gray.point(lambda v: (v * 3) % 256)))
        image = rgb.convert(mode) if mode in ("CMYK", "RGBA") else rgb
    buf = io.BytesIO()
    image.save(buf, format=variant["format"])
    return buf.getvalue()


def parquet_file(task: str, fact: dict, columns: dict, names: list[str] | None, rows: int, start: int,
                 split: str, transpose: bool) -> bytes:
    variants = fact["images"]
    classes = len(catalog.task_prompts(task)[0])
    labels = [(start + i) % classes for i in range(rows)]
    cache: dict[tuple[int, int, int], bytes] = {}
    cells = []
    for i, label in enumerate(labels):
        key = ((start + i) % len(variants), (start + i) % 8, int(label == 1))
        if key not in cache:
            cache[key] = draw(variants[key[0]], label, key[1], transpose, seed=len(task))
        suffix = "png" if variants[key[0]]["format"] == "PNG" else "jpg"
        cells.append({"bytes": cache[key], "path": f"{split}_{start + i}.{suffix}"})
    label_type = columns.get("label_type", "ClassLabel")
    image_col, label_col = columns["image"], columns["label"]
    data = {image_col: pa.array(cells, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}
    features: dict = {image_col: {"_type": "Image"}}
    if label_type == "bool":
        data[label_col] = pa.array([bool(v % 2) for v in labels], type=pa.bool_())
        features[label_col] = {"dtype": "bool", "_type": "Value"}
    else:
        data[label_col] = pa.array(labels, type=pa.int64())
        features[label_col] = ({"names": names, "_type": "ClassLabel"} if names is not None
                               else {"dtype": "int64", "_type": "Value"})
    for extra in columns.get("extra_columns", []):
        data[extra] = pa.array([f"{split}/{start + i:06d}" for i in range(rows)], type=pa.string())
        features[extra] = {"dtype": "string", "_type": "Value"}
    order = sorted(data) if columns.get("extra_columns") else list(data)  # the converter sorts webdataset keys
    table = pa.table({k: data[k] for k in order})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def dataset_repo(task: str, n_train: int, n_test: int) -> tuple[str, str, dict[str, bytes], list[str]]:
    """(repository path, branch, files, assumed facts) of ``task``'s hub dataset."""
    fact, src, assumed = facts(task), catalog.source(task), []
    if "images" not in fact:
        raise KeyError(f"tests/fixtures/sources/{task}.json has no 'images' fact (format, mode, size of its files)")
    repo = fact.get("repo")
    if repo is None:
        repo = src.repo
        assumed.append(f"repository {repo} (the catalog's)")
    columns = fact.get("columns")
    if columns is None:
        columns = {"image": src.image_column, "label": src.label_column, "label_type": "ClassLabel"}
        assumed.append("columns image/label with a ClassLabel (the catalog's names)")
    names = hub_names(task, fact, columns.get("label_type", "ClassLabel"), assumed)
    transpose = fact.get("orientation") == "torchvision"
    files: dict[str, bytes] = {"README.md": f"# {repo}\n\nDress-rehearsal stand-in.\n".encode()}
    for split, paths in split_paths(task, fact, assumed).items():
        rows = n_train + (src.val_size or 0) if split == src.train_split else n_test
        rows = max(rows, len(paths))
        per = [rows // len(paths) + (i < rows % len(paths)) for i in range(len(paths))]
        start = 0
        for path, count in zip(paths, per, strict=True):
            files[path] = parquet_file(task, fact, columns, names, count, start, split, transpose)
            start += count
    return f"datasets/{repo}", fact.get("ref", src.ref), files, assumed


# --------------------------------------------------------------------------- checkpoints


def clip_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """A full open_clip CLIP state dict of ``arch`` with random weights (open_clip's own init)."""
    from mass.encoder import create_clip

    torch.manual_seed(seed)
    return {k: v.detach().float().contiguous() for k, v in create_clip(arch).state_dict().items()}


def image_encoder_file(state: dict[str, torch.Tensor], keys: dict) -> OrderedDict:
    """The task-vector code's ImageEncoder state dict: ``model.`` + the CLIP keys it keeps."""
    keep = {k.removeprefix("model.") for k in keys["text_keys"]}
    return OrderedDict((f"model.{k}", v) for k, v in state.items() if k.startswith("visual.") or k in keep)


def finetuned_state(state: dict[str, torch.Tensor], index: int, scale: float = 2e-3) -> dict[str, torch.Tensor]:
    """``state`` plus a task vector on the image tower (a rolled copy of one random draw per task)."""
    out = dict(state)
    g = torch.Generator().manual_seed(12345)
    for key, value in state.items():
        if key.startswith("visual.") and value.is_floating_point() and value.numel() > 1:
            base = torch.randn(value.numel(), generator=g)
            out[key] = value + scale * value.abs().mean().clamp_min(1e-2) * base.roll(7919 * (index + 1)).view_as(value)
    return out


def head_weight(classes: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=g)
    return 100.0 * weight / weight.norm(dim=1, keepdim=True)


def model_folder(backbone: str) -> str:
    """The repository's folder name of ``backbone``: as tall_masks.json lists it, else the guess."""
    for name in facts("tall_masks")["files"]:
        parts = name.split("/")
        if parts[0] == "single_task" and parts[1].lower() == backbone.lower():
            return parts[1]
    return VIT_L_14_FOLDER if backbone == "ViT-L-14" else backbone


def openai_files(folder: Path, arch: str, state: dict[str, torch.Tensor]) -> dict[str, dict[str, Path]]:
    """open_clip's hub copy of the OpenAI weights of ``arch`` (here ``state``) under ``folder``:
    {repository: {file: Path}}."""
    import open_clip
    from safetensors.torch import save_file

    from mass.encoder import register_model_configs

    register_model_configs()
    hub = open_clip.get_pretrained_cfg(arch, "openai")["hf_hub"].rstrip("/")
    out = folder / hub
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "open_clip_model.safetensors")
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"arch": arch}}) + "\n")
    return {hub: {"open_clip_model.safetensors": out / "open_clip_model.safetensors",
                  "open_clip_config.json": out / "open_clip_config.json"}}


def checkpoint_files(folder: Path, backbones: dict[str, tuple[str, list[str]]]) -> tuple[dict, dict]:
    """Write nik-dim/tall_masks' and open_clip's OpenAI files for ``backbones`` (name -> (arch, tasks))
    under ``folder``; return {repo path: {file: Path}} for tall_masks and the OpenAI repositories."""
    keys = facts("tall_masks")["encoder_keys"]
    tall, openai = {}, {}
    for b, (backbone, (arch, tasks)) in enumerate(backbones.items()):
        state = clip_state(arch, seed=b)
        openai.update(openai_files(folder, arch, state))
        model_dir = f"single_task/{model_folder(backbone)}"
        local = folder / "tall_masks" / model_dir
        files = {}
        (local / "MNISTVal").mkdir(parents=True, exist_ok=True)
        torch.save(image_encoder_file(state, keys), local / "MNISTVal" / "nonlinear_zeroshot.pt")
        files[f"{model_dir}/MNISTVal/nonlinear_zeroshot.pt"] = local / "MNISTVal" / "nonlinear_zeroshot.pt"
        dim = state["text_projection"].shape[1]
        for t, task in enumerate(tasks):
            (local / f"{task}Val").mkdir(parents=True, exist_ok=True)
            path = local / f"{task}Val" / "nonlinear_finetuned.pt"
            torch.save(image_encoder_file(finetuned_state(state, catalog.TASKS.index(task)), keys), path)
            files[f"{model_dir}/{task}Val/nonlinear_finetuned.pt"] = path
            head = local / f"head_{task}Val.pt"
            pickled_head(pytest.MonkeyPatch(), head, head_weight(len(catalog.task_prompts(task)[0]), dim, t),
                         module="src.models.modeling")
            files[f"{model_dir}/head_{task}Val.pt"] = head
        tall.update(files)
    return tall, openai


def crisostomi_files(folder: Path, backbones: dict[str, tuple[str, list[str]]]) -> dict[str, dict[str, Path]]:
    """The final edition's encoders for ``backbones`` (name -> (arch, tasks)) under ``folder``, laid out as
    tests/fixtures/sources/crisostomi.json records them: one repository per backbone and task and the
    base; each a torch-saved ImageEncoder state dict (``model.`` + the image tower and the text tensors
    kept); with open_clip's OpenAI files again (a hub that serves each encoder once has deleted them after
    the first edition's run). Returns {repository: {file: Path}}. The same random draws as the tall_masks
    stand-ins."""
    fact = facts("crisostomi")
    keys = {"text_keys": fact["encoder_keys"]["text_keys_kept"]}
    out: dict[str, dict[str, Path]] = {}
    for b, (backbone, (arch, tasks)) in enumerate(backbones.items()):
        state = clip_state(arch, seed=b)
        out.update(openai_files(folder, arch, state))
        encoders = {fact["base_repo"].format(model=backbone): state,
                    **{fact["finetuned_repo"].format(model=backbone, task=task):
                       finetuned_state(state, catalog.TASKS.index(task)) for task in tasks}}
        for repo, weights in encoders.items():
            path = folder / repo / fact["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(image_encoder_file(weights, keys), path)
            out[repo] = {fact["file"]: path}
    return out


# --------------------------------------------------------------------------- the hub


# The real pool (config.yaml textspan.descriptions): 3,498 descriptions, one per line, no empty line, no
# duplicate, no newline after the last (issue 30, item 5). The stand-in has the same structure with a tenth
# of the lines: every description is encoded by the text tower in interpret_tsv, and at the real count that
# step alone took 7.4 min of each rehearsal run on a 2-core CPU (2026-12-06); TEXTSPAN's greedy choice of
# texts_per_task x tasks texts needs far fewer than 350.
DESCRIPTIONS = 350


def descriptions() -> bytes:
    """A stand-in of TEXTSPAN's general image descriptions, in the real file's line structure."""
    things = ["car", "dog", "cat", "flower", "digit", "road sign", "forest", "beach", "kitchen", "face", "texture",
              "satellite view of fields", "plate of food", "tissue sample", "handwritten character", "sentence",
              "bird", "truck", "house", "river", "mountain", "street", "pattern", "tree", "boat", "lamp"]
    adjectives = ["", "red ", "small ", "large ", "old ", "new ", "dark ", "bright ", "wet ", "striped ", "round ",
                  "blue ", "green ", "distant ", "tiny ", "wooden ", "metal ", "painted ", "broken ", "shiny ",
                  "blurred ", "faded ", "colourful "]
    styles = ["A photo of a", "An image of a", "A close-up of a", "A blurry picture of a", "A drawing of a",
              "A sketch of a"]
    lines = [f"{s} {a}{t}" for s in styles for a in adjectives for t in things]
    lines = lines[::len(lines) // DESCRIPTIONS][:DESCRIPTIONS]  # spread over every style and adjective
    return "\n".join(lines).encode()


def fill_hub(server: HubServer, folder: Path, *, tasks: list[str], backbones: dict[str, tuple[str, list[str]]],
             n_train: int = 20, n_test: int = 3, descriptions_at: dict | None = None,
             serve_once: bool = False) -> dict:
    """Generate every file into ``folder`` / memory and add it to ``server``; return a summary with
    the facts taken from the catalog or a convention (``assumed``, per task). ``serve_once``: the
    encoder checkpoints are deleted after their first download (a second one is a miss), which
    keeps the rehearsal's disk peak near one copy of them."""
    summary: dict = {"datasets": {}, "assumed": {}, "models": {}}
    for task in tasks:
        repo_path, ref, files, assumed = dataset_repo(task, n_train, n_test)
        commit = commit_of(repo_path, ref)
        if ref != "main":  # the default branch holds the original upload (FER2013: webdataset tar files)
            server.add(repo_path, "README.md", files["README.md"], commit=commit_of(repo_path, "main"))
        for name, data in files.items():
            server.add(repo_path, name, data, commit=commit, branch=ref)
        summary["datasets"][task] = {"repo": repo_path, "ref": ref, "files": sorted(files)}
        if assumed:
            summary["assumed"][task] = assumed
    tall, openai = checkpoint_files(folder, backbones)
    repo = facts("tall_masks")["repo"]
    server.add(repo, "README.md", b"# tall_masks (dress-rehearsal stand-in)\n", commit=commit_of(repo))
    server.add(repo, "tall_masks/ViT-L-14/TALL_mask_8task.npy", b"\x93NUMPY stand-in", commit=commit_of(repo))
    for name, path in tall.items():
        server.add(repo, name, path, commit=commit_of(repo), once=serve_once and name.endswith(".pt")
                   and "/head_" not in name)
    for hub, files in openai.items():
        for name, path in files.items():
            server.add(hub, name, path, commit=commit_of(hub), once=serve_once and name.endswith(".safetensors"))
    summary["models"] = {repo: sorted(tall), **{hub: sorted(files) for hub, files in openai.items()}}
    if descriptions_at:
        pool = descriptions_at
        server.raw[f"/{pool['repo']}/{pool['commit']}/{pool['path']}"] = descriptions()
    return summary
