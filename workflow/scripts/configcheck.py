"""The pipeline's configuration: checked before any job runs, and documented from its schema.

The Snakefile calls :func:`check_config` on the merged configuration (config.yaml, then each
``--configfile``), before Snakemake builds the DAG, so a wrong config stops the run with every
problem listed (the key and the fix) before any output is deleted or any job starts:

1. unknown keys (a typo such as ``routing: {tok_k: 5}`` or a top-level ``rooters:``), with the
   allowed keys and the closest one;
2. the JSON schema (``workflow/schemas/config.schema.yaml``): types, enums, ranges;
3. what the schema cannot express: architecture names (open_clip's model configs and the repo's
   ``src/mass/model_configs``), ``candidate_blocks`` and ``routing.layer`` against the model's depth,
   ordered ranges, the routing location among what the first pass records.

``python workflow/scripts/configcheck.py docs > docs/config.md`` writes the configuration
reference from the schema (a test checks that docs/config.md is current);
``python workflow/scripts/configcheck.py check config.yaml [overlay.yaml ...]`` checks config files
without Snakemake. Only the standard library and PyYAML/jsonschema are imported (no torch), so
every Snakemake start-up stays fast.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
LAYER = re.compile(r"^(\d+)\.(attn|mlp)\.(in|out)$")


class ConfigError(ValueError):
    """The configuration cannot be run; the message lists every problem with its key and fix."""


def with_defaults(schema: Mapping, config: Mapping) -> dict:
    """The schema with config.yaml's values as the defaults of the keys it sets.

    The defaults live in config.yaml alone; the schema file holds only those of keys inside a map entry
    (a task's ``templates``, a backbone's ``routing_layer``), which config.yaml cannot hold. This is
    what docs/config.md shows."""
    def fill(sub: Mapping, value: Any) -> dict:
        sub = dict(sub)
        sub["default"] = value
        if isinstance(value, Mapping) and "properties" in sub:
            sub["properties"] = {key: fill(child, value[key]) if key in value else child
                                 for key, child in sub["properties"].items()}
        return sub
    out = dict(schema)
    out["properties"] = {key: fill(sub, config[key]) if key in config else sub
                         for key, sub in schema["properties"].items()}
    return out


def load_schema(path: str | os.PathLike = SCHEMA) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _resolve(schema: Mapping, sub: Mapping) -> Mapping:
    """``sub`` with a local ``$ref`` (``#/definitions/x``) followed; its own keys win."""
    ref = sub.get("$ref")
    if not ref:
        return sub
    target: Any = schema
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return {**_resolve(schema, target), **{k: v for k, v in sub.items() if k != "$ref"}}


def _key(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "(top level)"


def unknown_keys(config: Any, schema: Mapping, sub: Mapping | None = None, path: tuple[str, ...] = ()) -> list[str]:
    """One message per key the schema does not allow, naming it, the closest allowed key and all of them."""
    sub = _resolve(schema, schema if sub is None else sub)
    if not isinstance(config, Mapping):
        return []
    errors = []
    props = sub.get("properties", {})
    extra = sub.get("additionalProperties", True)
    for key, value in config.items():
        if key in props:
            errors += unknown_keys(value, schema, props[key], (*path, str(key)))
        elif extra is False:
            allowed = list(props)
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"under '{_key(path)}'" if path else "at the top level"
            errors.append(f"{_key((*path, str(key)))}: unknown key{hint}; allowed {where}: {', '.join(allowed)}")
        elif isinstance(extra, Mapping):
            errors += unknown_keys(value, schema, extra, (*path, str(key)))
    return errors


# What to give where a declared hub dataset's repository or commit is missing or malformed (the schema's own
# messages name the key but quote a regular expression)
_HUB_FIXES = {
    "hub": "{0}: a hub dataset is declared by its repository (<owner>/<name>) and the commit to download (its "
           "40-hex sha, so that every run gets the same files)",
    "repo": "{1!r} is not a dataset repository; give it as <owner>/<name>, e.g. tanganke/dtd",
    "revision": "{1!r} is not a commit: give the full 40-hex sha of the commit to download (the repository's "
                "history on the hub lists them), so that every run gets the same files",
}


def schema_errors(config: Mapping, schema: Mapping) -> list[str]:
    """Type, enum and range errors of the JSON schema, one line each, named by key."""
    from jsonschema import Draft202012Validator

    errors = []
    for err in sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.path))):
        if err.validator == "additionalProperties":
            continue  # reported by unknown_keys, with the allowed keys
        path = ".".join(str(p) for p in err.path)
        message = err.message
        if err.validator == "contains" and path == "routers":
            message = "must include 'proj' (MASS itself)"
        elif err.validator == "oneOf" and path == "routing.eta":
            message = f"{err.instance!r} is neither 'auto' nor a number in [0, 1]"
        elif re.fullmatch(r"tasks\.[^.]+\.hub(\.repo|\.revision)?", path) and err.validator in ("pattern", "required"):
            message = _HUB_FIXES[path.rsplit(".", 1)[-1] if err.validator == "pattern" else "hub"].format(err.message,
                                                                                                       err.instance)
        elif len(message) > 200:
            message = message[:200] + "..."
        errors.append(f"{path or '(top level)'}: {message}")
    return errors


# --- what the schema cannot express ---------------------------------------------------------

def _package_dir(name: str) -> Path | None:
    """Where package ``name`` is installed, found without importing it (None: not installed)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def mass_file(basedir: str | os.PathLike, *parts: str, package: str = "mass") -> Path | None:
    """A file or folder of package ``package`` (mass or mass_pipeline): the repository's copy next to the
    workflow, else the installed one."""
    local = Path(basedir, "src", package, *parts)
    if local.exists():
        return local
    installed = _package_dir(package)
    return None if installed is None else installed.joinpath(*parts)


def model_config_dirs(basedir: str | os.PathLike = ROOT) -> list[Path]:
    """Folders of open_clip model configs: open_clip's own and the repository's (found without
    importing either package)."""
    open_clip = _package_dir("open_clip")
    dirs = [open_clip / "model_configs" if open_clip else None, mass_file(basedir, "model_configs")]
    return [d for d in dirs if d is not None and d.is_dir()]


def architectures(dirs: Iterable[str | os.PathLike]) -> dict[str, tuple[int, list[tuple[int, int]]] | None]:
    """open_clip model name -> (blocks, shapes of its task matrices) of its image tower (None when not a
    ViT): attention's in_proj and out_proj, the MLP's c_fc and c_proj, the output projection and the
    positional embedding. The width, their smaller side but for the last two, comes first."""
    archs: dict[str, tuple[int, list[tuple[int, int]]] | None] = {}
    for folder in dirs:
        for path in sorted(Path(folder).glob("*.json")):
            try:
                model = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            vision = model.get("vision_cfg", {})
            layers, width = vision.get("layers"), vision.get("width")
            if not (isinstance(layers, int) and isinstance(width, int) and isinstance(vision.get("patch_size"), int)):
                archs[path.stem] = None
                continue
            mlp = int(width * vision.get("mlp_ratio", 4.0))
            tokens = (vision.get("image_size", 224) // vision["patch_size"]) ** 2 + 1
            archs[path.stem] = (layers, [(width, width), (3 * width, width), (mlp, width), (width, mlp),
                                         (width, model.get("embed_dim", width)), (tokens, width)])
    return archs


def value_errors(config: Mapping, archs: Mapping[str, tuple[int, list[tuple[int, int]]] | None] | None) -> list[str]:
    """Architectures, blocks, ranges and the routing location, each error naming the key and fix.
    ``archs`` None: open_clip's model configs were not found, architecture names are not checked."""
    errors = []
    depth: dict[str, int] = {}
    shapes: dict[str, list[tuple[int, int]]] = {}
    for name, bb in (config.get("backbones") or {}).items():
        arch, key = bb.get("arch"), f"backbones.{name}"
        if archs is not None:
            if arch not in archs:
                close = difflib.get_close_matches(str(arch), list(archs), n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                errors.append(f"{key}.arch: {arch!r} is not an open_clip architecture (nor one of "
                              f"src/mass/model_configs){hint}")
                continue
            if archs[arch] is None:
                errors.append(f"{key}.arch: {arch!r} is not a vision transformer; MASS routes on transformer blocks")
                continue
            depth[name], shapes[name] = archs[arch]
        low, high = bb.get("candidate_blocks", [0, 0])
        if low > high:
            errors.append(f"{key}.candidate_blocks: [{low}, {high}] is not ordered; write [{high}, {low}]")
        if name in depth and max(low, high) >= depth[name]:
            last = depth[name] - 1
            errors.append(f"{key}.candidate_blocks: [{low}, {high}] goes past the last block of {arch} "
                          f"(blocks 0-{last}); use blocks in 0-{last}, e.g. [{min(low, last)}, {last}]")

    routing, first_pass = config.get("routing") or {}, config.get("first_pass") or {}
    ios, tokens = first_pass.get("ios", []), first_pass.get("tokens", [])
    layer = str(routing.get("layer", "auto"))
    chosen = {name: ((config.get("backbones") or {}).get(name) or {}).get("routing_layer")
              for name in (config.get("run") or {}).get("backbones", [])}
    fixed = {name: (f"backbones.{name}.routing_layer", own) if own else ("routing.layer", layer)
             for name, own in chosen.items()}
    for name, (key, where) in fixed.items():
        match = LAYER.match(where)
        if not match:
            continue
        block, _, io = int(match.group(1)), match.group(2), match.group(3)
        if name in depth and block >= depth[name]:
            errors.append(f"{key}: {where!r}: block {block} does not exist in backbone {name} "
                          f"({config['backbones'][name]['arch']} has blocks 0-{depth[name] - 1}); "
                          f"choose a block in 0-{depth[name] - 1}, or 'auto'")
        if io not in ios:
            errors.append(f"{key}: {where!r} routes on module {io}puts, which the first pass does not "
                          f"record (first_pass.ios: {ios}); add '{io}' to first_pass.ios")
    if not LAYER.match(layer) and routing.get("io") not in ios:
        errors.append(f"routing.io: {routing.get('io')!r} is not recorded by the first pass (first_pass.ios: "
                      f"{ios}); add it to first_pass.ios")
    if routing.get("token") not in tokens:
        errors.append(f"routing.token: {routing.get('token')!r} is not recorded by the first pass "
                      f"(first_pass.tokens: {tokens}); add it to first_pass.tokens")
    low, high = routing.get("eta_range", [0, 0])
    if low > high:
        errors.append(f"routing.eta_range: [{low}, {high}] has low > high; write [{high}, {low}]")
    early = (config.get("textspan") or {}).get("early_block", 0)
    for name in (config.get("run") or {}).get("backbones", []):
        if name in depth and early >= depth[name]:
            errors.append(f"textspan.early_block: block {early} does not exist in backbone {name} "
                          f"({config['backbones'][name]['arch']} has blocks 0-{depth[name] - 1}); choose one in "
                          f"0-{depth[name] - 1}")
    return list(dict.fromkeys(errors + source_errors(config) + own_task_errors(config, catalog_tasks())
                              + cache_errors(config, shapes)))


def cache_errors(config: Mapping, shapes: Mapping[str, list[tuple[int, int]]]) -> list[str]:
    """What reads more components from the SVD cache than it holds, floor(min(m, n) * svd.rank_fraction) per
    m x n task matrix: TSV-C's size budget and SMILE's experts and gates."""
    fraction = (config.get("svd") or {}).get("rank_fraction", 1)
    errors = []
    budget = (config.get("tsvc") or {}).get("size_fraction", 0)
    for name in (config.get("run") or {}).get("backbones", []):
        for m, n in shapes.get(name, []):
            # mass.tsvc.rank_for_size: the largest k with k (m + n + 1) <= size_fraction m n
            needed, cached = max(1, min(min(m, n), int(budget * m * n // (m + n + 1)))), int(min(m, n) * fraction)
            if needed > cached:
                most = math.floor(1000 * cached * (m + n + 1) / (m * n)) / 1000  # its k is then at most cached
                errors.append(f"tsvc.size_fraction: {budget} keeps {needed} components of the {m} x {n} task matrices "
                              f"of backbone {name}, and the SVD cache holds {cached} (svd.rank_fraction {fraction}); "
                              f"lower it to at most {most:g}, or raise svd.rank_fraction")
                break
    return errors + smile_errors(config, {name: s[0][0] for name, s in shapes.items()})


def smile_errors(config: Mapping, width: Mapping[str, int]) -> list[str]:
    """SMILE builds its experts and gates from the SVD cache, which holds floor(D * svd.rank_fraction)
    components of each attention and MLP matrix (D: the tower's width, their smaller side)."""
    moerging = config.get("moerging") or {}
    if "smile" not in moerging.get("methods", []):
        return []
    smile, fraction = moerging.get("smile") or {}, (config.get("svd") or {}).get("rank_fraction", 1)
    errors = []
    for name in (config.get("run") or {}).get("backbones", []):
        if name not in width:
            continue
        cached = int(width[name] * fraction)
        for key in ("gate_k", "k"):
            if smile.get(key, 0) > cached:
                errors.append(f"moerging.smile.{key}: {smile[key]} components, but the SVD cache holds {cached} per "
                              f"matrix for backbone {name} (width {width[name]} x svd.rank_fraction {fraction}); "
                              f"lower it to at most {cached}, or raise svd.rank_fraction to at least "
                              f"{smile[key] / width[name]:.4g}")
    sizes = [len((config.get("benchmarks") or {}).get(b, [])) for b in (config.get("run") or {}).get("benchmarks", [])]
    if sizes and smile.get("top_k", 1) > min(sizes):
        errors.append(f"moerging.smile.top_k: {smile['top_k']} experts per token, but the smallest selected benchmark "
                      f"has {min(sizes)} tasks; lower it to at most {min(sizes)}")
    return errors


def source_errors(config: Mapping) -> list[str]:
    """Keys about the checkpoints' source and provenance that depend on each other or on the run."""
    errors = []
    sources = config.get("sources") or {}
    layout = sources.get("finetuned_layout")
    if layout in ("crisostomi", "fusionbench") and sources.get("finetuned_revision"):
        errors.append(f"sources.finetuned_revision: {sources['finetuned_revision']!r} names one commit, but the "
                      f"{layout} layout has one repository per backbone and task; set it to null (each repository's "
                      "commit is pinned in sources.lock_file on first download)")
    run_tasks = {t for b in (config.get("run") or {}).get("benchmarks", [])
                 for t in (config.get("benchmarks") or {}).get(b, [])}
    finetuned = config.get("finetuned") or {}
    for backbone, files in (finetuned.get("files") or {}).items():
        if backbone not in (config.get("backbones") or {}):
            errors.append(f"finetuned.files.{backbone}: no backbone of that name (backbones: "
                          f"{sorted(config.get('backbones') or {})}); check the spelling")
        for task, path in (files or {}).items():
            if task not in run_tasks:
                errors.append(f"finetuned.files.{backbone}.{task}: not a task of the selected benchmarks "
                              f"({sorted(run_tasks)}); check the spelling")
            elif not Path(path).expanduser().is_file():
                errors.append(f"finetuned.files.{backbone}.{task}: {path} is not a file; give the path of the "
                              "fine-tuned encoder (absolute, or relative to the working directory)")
    if layout is not None and finetuned.get("source") == "hub":
        from mass_pipeline.sources.layouts import LAYOUTS  # plain data: no torch

        source = LAYOUTS.get(layout)
        own = {t for files in (finetuned.get("files") or {}).values() for t in files} | set(config.get("tasks") or {})
        missing = sorted(t for t in run_tasks - set(finetuned.get("refinetune") or []) - own
                         if source is not None and not source.has_task(t))
        if missing:
            errors.append(f"finetuned.refinetune: the {layout} source has no encoder for {missing} (fusionbench's "
                          "EMNIST is EMNIST letters, not the paper's digits); add them to finetuned.refinetune to "
                          "fine-tune them here, or leave them out of the run's benchmarks (FusionBench's own task "
                          "set, EMNISTLetters in EMNIST's place: --configfile workflow/presets/fusionbench.yaml)")
    unknown = [t for t in (config.get("provenance") or {}).get("accept", []) if t not in run_tasks]
    if unknown:
        errors.append(f"provenance.accept: {unknown} are not tasks of the selected benchmarks "
                      f"({sorted(run_tasks)}); check the spelling")
    return errors


def catalog_tasks(basedir: str | os.PathLike = ROOT) -> list[str]:
    """The catalog's task names, from its package data (src/mass_pipeline/data/prompts.json; no torch)."""
    return list(json.loads(mass_file(basedir, "data", "prompts.json", package="mass_pipeline").read_text())["tasks"])


def own_task_errors(config: Mapping, catalog: Iterable[str]) -> list[str]:
    """Declared tasks (key ``tasks``): names free, files there, and every hub benchmark's task known."""
    errors = []
    catalog = list(catalog)
    declared = config.get("tasks") or {}
    for name, block in declared.items():
        key = f"tasks.{name}"
        if name in catalog and config.get("data_source") == "hub":
            errors.append(f"{key}: the catalog has a task called {name}; give yours another name")
        if block.get("folder"):
            folder = Path(block["folder"]).expanduser()
            if not folder.is_dir():
                errors.append(f"{key}.folder: {block['folder']} is not a folder; give the folder that holds train/ and "
                              "test/ (absolute, or relative to the working directory)")
        for split, path in (block.get("csv") or {}).items():
            if not Path(path).expanduser().is_file():
                errors.append(f"{key}.csv.{split}: {path} is not a file; give the CSV file (columns path,label) of "
                              f"the {split} split")
    if config.get("data_source") == "hub":
        known = set(catalog) | set(declared)
        for bench in (config.get("run") or {}).get("benchmarks", []):
            for task in (config.get("benchmarks") or {}).get(bench, []):
                if task not in known:
                    close = difflib.get_close_matches(task, sorted(known), n=2, cutoff=0.6)
                    hint = f"; did you mean {' or '.join(close)}?" if close else ""
                    errors.append(f"benchmarks.{bench}: {task} is neither a task of the catalog "
                                  f"(src/mass_pipeline/data/catalog.py) nor declared under tasks{hint}")
    return errors


def check_config(config: Mapping, basedir: str | os.PathLike = ROOT, schema: Mapping | None = None) -> None:
    """Raise :class:`ConfigError` listing every problem of ``config`` (nothing is changed)."""
    schema = load_schema(Path(basedir) / "workflow" / "schemas" / "config.schema.yaml") if schema is None else schema
    errors = unknown_keys(config, schema) + schema_errors(config, schema)
    if not errors:
        dirs = model_config_dirs(basedir)
        has_open_clip = any(d.parent.name == "open_clip" for d in dirs)
        errors = value_errors(config, architectures(dirs) if has_open_clip else None)
    if errors:
        raise ConfigError("the configuration cannot be run (nothing was started or deleted):\n"
                          + "\n".join(f"  - {e}" for e in errors))


def check_configfile_flags(argv: list[str]) -> None:
    """``--configfile`` given more than once: Snakemake keeps only the last one's files. Refuse it
    and show the one-flag form, which layers every file in order."""
    flags = [a for a in argv if a.split("=", 1)[0] in ("--configfile", "--configfiles")]
    if len(flags) > 1:
        raise ConfigError(f"{flags[0]} is given {len(flags)} times; Snakemake would keep only the files of the "
                          "last one. Give it once with every file, in order: --configfile a.yaml b.yaml")


def merge(base: dict, overlay: Mapping) -> dict:
    """``overlay`` onto ``base`` as Snakemake layers config files (dicts merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


# --- docs/config.md -----------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _allowed(schema: Mapping, sub: Mapping) -> str:
    sub = _resolve(schema, sub)
    if "enum" in sub:
        return "one of " + ", ".join(_fmt(v) for v in sub["enum"])
    if "oneOf" in sub:
        return " or ".join(_allowed(schema, s) for s in sub["oneOf"])
    kind = sub.get("type", "")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    bounds = []
    if "minimum" in sub:
        bounds.append(f">= {sub['minimum']}")
    if "exclusiveMinimum" in sub:
        bounds.append(f"> {sub['exclusiveMinimum']}")
    if "maximum" in sub:
        bounds.append(f"<= {sub['maximum']}")
    if "pattern" in sub:
        bounds.append(f"matching `{sub['pattern']}`")
    if kind == "array":
        items = _allowed(schema, sub.get("items", {}))
        size = ""
        if sub.get("minItems") == sub.get("maxItems") and "minItems" in sub:
            size = f"{sub['minItems']} "
        elif "minItems" in sub:
            size = f"at least {sub['minItems']} "
        return f"list of {size}({items})" + (", no repeats" if sub.get("uniqueItems") else "")
    if kind == "object" and isinstance(sub.get("additionalProperties"), Mapping) and "properties" not in sub:
        return f"map: name -> {_allowed(schema, sub['additionalProperties'])}"
    return " ".join([kind, " and ".join(bounds)]).strip()


def _rows(schema: Mapping, sub: Mapping, path: tuple[str, ...]) -> list[str]:
    """Table rows of the keys below ``sub`` (nested objects flattened to dotted keys)."""
    rows = []
    required = _resolve(schema, sub).get("required", [])
    for key, child in _resolve(schema, sub).get("properties", {}).items():
        child = _resolve(schema, child)
        name = ".".join((*path, key))
        if child.get("type") == "object" and "properties" in child:
            rows += _rows(schema, child, (*path, key))
            continue
        default = _fmt(child["default"]) if "default" in child else "required" if key in required else "optional"
        cells = (f"`{name}`", default, _allowed(schema, child), child.get("description", ""))
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def render_docs(schema: Mapping) -> str:
    """docs/config.md: one section per top-level key, one table row per key below it."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from workflow/schemas/config.schema.yaml by",
        "     python workflow/scripts/configcheck.py docs > docs/config.md",
        "     Do not edit by hand: tests/workflow/test_config.py checks that this file is current. -->",
        "",
        "`config.yaml` holds the paper's configuration; presets (`workflow/presets/demo.yaml`) and your own",
        "files are layered onto it, in order, with one flag:",
        "`snakemake --cores all --configfile workflow/presets/demo.yaml my.yaml`",
        "(given twice, `--configfile` would keep only the last file, so the run refuses that).",
        "Dictionaries merge key by key; lists and values replace. Defaults are the paper's values.",
        "",
        "Before any job runs, the run stops with every problem listed, each naming its key and the fix, when",
        "a key is unknown (a typo), a value has the wrong type or range, an architecture is not an open_clip",
        "model, `candidate_blocks` or `routing.layer` name a block the model does not have, the routing",
        "location is not among what the first pass records, or a range is reversed. To check config files",
        "without Snakemake:",
        "`python workflow/scripts/configcheck.py check config.yaml workflow/presets/demo.yaml my.yaml`.",
        "",
    ]
    for key, sub in schema["properties"].items():
        sub = _resolve(schema, sub)
        lines += [f"## `{key}`", "", sub.get("description", ""), ""]
        entry = sub.get("additionalProperties")
        if sub.get("type") == "object" and "properties" in sub:
            rows = _rows(schema, sub, (key,))
        elif isinstance(entry, Mapping) and "properties" in _resolve(schema, entry):
            rows = _rows(schema, entry, (key, "<name>"))
        else:
            default = "below" if isinstance(entry, Mapping) else _fmt(sub["default"])
            rows = [f"| `{key}` | {default} | {_cell(_allowed(schema, sub))} | |"]
        lines += ["| key | default | allowed | description |", "|---|---|---|---|", *rows, ""]
        if isinstance(entry, Mapping):
            lines += ["Default:", "", "```yaml", yaml.safe_dump({key: sub.get("default", {})}, sort_keys=False,
                                                               default_flow_style=None, width=100).rstrip(),
                      "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("docs", help="print docs/config.md, generated from the schema")
    check = sub.add_parser("check", help="check config files, layered in order as Snakemake does")
    check.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "docs":
        with open(ROOT / "config.yaml") as fh:
            sys.stdout.write(render_docs(with_defaults(load_schema(), yaml.safe_load(fh))))
        return 0
    config: dict = {}
    for path in args.files:
        with open(path) as fh:
            config = merge(config, yaml.safe_load(fh) or {})
    try:
        check_config(config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    print("configuration OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
