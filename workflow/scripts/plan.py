"""A compute plan before a run: the images each rule forwards, its jobs, GPU-hours and disk per folder.

Reads the configuration as Snakemake does (config.yaml, then each ``--configfile`` in order) and
the split sizes of the code that makes the splits (:mod:`mass_pipeline.data.catalog` for hub data: the
``<X>Val`` carve of the hub copy's train split, EuroSAT's fixed 2700; the demo's ``n_train`` /
``n_test`` with :func:`mass.data.store.carve_validation`), then counts, for the full DAG of
``snakemake --forceall``, how many images every rule sends through an image tower:

    python workflow/scripts/plan.py                                          # the paper's grid
    python workflow/scripts/plan.py --configfile workflow/presets/demo.yaml  # the demo
    python workflow/scripts/plan.py --images-per-second ViT-B-32=<img/s> ViT-B-16=<img/s> ViT-L-14=<img/s> [--json]

A forwarded image is one image sent once through an image tower, whatever that forward does:
the first pass (TSV-M or theta_pre, residuals probed at every block), an endpoint or baseline
evaluation, a forward stopped at the routing layer (routing_features), a MASS second pass (each
image once through its own task subset's merge: dense weights for frequent subsets, else
theta_pre plus per-sample low-rank updates, measured at ~1.0-1.5 plain forwards per image), or a
training step's forward (fine-tuning; backward and optimizer step come on top). Choosing eta
forwards nothing per trial: the validation second pass runs once per m = 1 .. min(top_k, T) and
every trial is a table lookup (mass_pipeline.steps.evaluate_mass). The steps log the same count as
``images forwarded: N`` (the last line of their log); tests/workflow/test_plan.py compares the two on a
real demo run. Rules not listed forward no image (build_head, check_head and interpret_tsv encode
text only; merges, SVD caches, sweeps and tables compute on weights or stored arrays).

GPU-hours are images / (images/s) per backbone: the figures given with ``--images-per-second``,
else the plain-forward throughput of a GPU result in benchmarks/results/ (``benchmarks/run.py``)
for that backbone's architecture, else none. Disk is estimated from the split sizes, the
architectures' parameter shapes (open_clip configs, built on the meta device: no memory, no
weights) and the float32 files the steps write.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from configcheck import check_config, check_configfile_flags, merge  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FLOAT = 4  # bytes of the float32 arrays and tensors the steps write
INT = 8  # int64 labels and owners

# What one forwarded image of each rule is (see the module docstring).
FORWARD_KIND = {
    "pretrain_demo_clip": "training step (image + text tower)",
    "finetune": "training step (image tower)",
    "evaluate_endpoints": "plain forward",
    "first_pass": "forward, residuals probed",
    "routing_features": "forward stopped at routing layer",
    "evaluate_baseline": "plain forward",
    "evaluate_tsvc": "plain forward",
    "evaluate_mass": "second pass (own merge)",
    "evaluate_batched": "second pass (own merge)",
    "evaluate_smile": "forward through every layer's experts",
    "evaluate_wemoe": "adaptation step (forward + backward) or forward",
    "measure_cost": "a timed or counted pass of one method",
}


@dataclass(frozen=True)
class Splits:
    """Images of one task's stored splits; ``exact`` is False where the hub copy's size is not in
    the catalog and the published size stands in."""

    train: int | None
    val: int
    test: int
    exact: bool = True


@dataclass
class Job:
    """One job: its rule, backbone, wildcards as in its log (results/logs/<rule>/<wildcards>.log), images."""

    rule: str
    backbone: str
    wildcards: str
    images: int


def load_config(configfiles: Sequence[str], base: Path = ROOT / "config.yaml") -> dict:
    """config.yaml overlaid by each config file in order, as ``snakemake --configfile A B`` merges them."""
    with open(base) as fh:
        config = yaml.safe_load(fh)
    for path in configfiles:
        with open(path) as fh:
            config = merge(config, yaml.safe_load(fh) or {})
    return config


def split_sizes(config: Mapping, task: str) -> Splits:
    """Train (what remains after the val carve), val and test images of ``task`` for the data source."""
    from mass.data.store import carve_validation
    from mass_pipeline.data import catalog

    if config["data_source"] == "demo":
        train, val = carve_validation(int(config["demo"]["n_train"]), seed=catalog.VAL_SEED, max_val=catalog.VAL_MAX)
        return Splits(len(train), len(val), int(config["demo"]["n_test"]))
    src = catalog.SOURCES[task]
    if src.hub_rows is None:  # the catalog does not record the hub copy's size: the published one stands in
        val = src.expected_val if src.expected_val is not None else src.published_val
        return Splits(None, val, src.published_test, exact=False)
    return Splits(src.hub_rows[0] - src.expected_val, src.expected_val, src.hub_rows[1])


def demo_corpus_size(config: Mapping) -> int:
    """Images of the demo CLIP's pretraining corpus (mass_pipeline.steps.pretrain_demo_clip.captioned_corpus)."""
    from mass_pipeline.data.demo import TASKS

    pre = config["demo"]["pretrain"]
    return len(TASKS) * (int(pre["per_task"]) + int(pre["domain_per_task"]))


def trained_here(config: Mapping, task: str, backbone: str | None = None) -> bool:
    """Fine-tuned by the pipeline (common.smk's ``finetuned``): not fetched from the hub (your own tasks never
    are), nor given as a file (``finetuned.files``; for ``backbone``, or on every backbone when None)."""
    files = config["finetuned"].get("files") or {}
    given = [task in (files.get(b) or {}) for b in ([backbone] if backbone else config["run"]["backbones"])]
    if given and all(given):
        return False
    return (config["finetuned"]["source"] != "hub" or task in config["finetuned"]["refinetune"]
            or task in (config.get("tasks") or {}))


def first_passes(config: Mapping) -> list[tuple[str, str]]:
    """(model, split) of every first pass the DAG needs: each epsilon's validation pass (its sweep
    chooses epsilon), static TSV-M's test pass (evaluate_tsvm; common.smk's STATIC_TSVM), the chosen
    merge's test pass (per-layer plot, batched MASS) and both passes of every router's model (proj:
    'selected', proj_pre: 'pretrained')."""
    from mass_pipeline.methods import ROUTERS

    needed = [(f"eps{e}", "val") for e in config["merge"]["epsilon_grid"]]
    static = "epsnone" if config["merge"]["attention"] == "in_proj" else "static"
    needed += [(static, "test"), ("selected", "test")]
    for router in config["routers"]:
        needed += [(ROUTERS[router].first_pass, "val"), (ROUTERS[router].first_pass, "test")]
    return list(dict.fromkeys(needed))


def plan_jobs(config: Mapping, sizes: Mapping[str, Splits]) -> list[Job]:
    """Every image-forwarding job of the full DAG with the images it forwards."""
    from mass_pipeline.methods import BASELINES, ROUTERS

    jobs: list[Job] = []
    run = config["run"]
    all_tasks = list(dict.fromkeys(t for b in run["benchmarks"] for t in config["benchmarks"][str(b)]))
    for bb in run["backbones"]:
        if config["backbones"][bb]["pretrained"] == "demo":
            pre = config["demo"]["pretrain"]
            jobs.append(Job("pretrain_demo_clip", bb, bb,
                            int(pre["steps"]) * min(int(pre["batch_size"]), demo_corpus_size(config))))
        for task in all_tasks:
            s = sizes[task]
            if trained_here(config, task, bb):
                ft = config["finetune"]
                batch = int(ft["batch_size"]) if s.train is None else min(int(ft["batch_size"]), s.train)
                jobs.append(Job("finetune", bb, f"{bb}/{task}", int(ft["steps"]) * batch))
            jobs.append(Job("evaluate_endpoints", bb, f"{bb}/{task}", 2 * (s.val + s.test)))  # zero-shot, fine-tuned
        for bench in map(str, run["benchmarks"]):
            tasks = config["benchmarks"][bench]
            T = len(tasks)
            V, S = sum(sizes[t].val for t in tasks), sum(sizes[t].test for t in tasks)
            n = {"val": V, "test": S}
            for model, split in first_passes(config):
                jobs.append(Job("first_pass", bb, f"{bb}/{bench}/{model}_{split}", n[split]))
            for model in dict.fromkeys(ROUTERS[r].first_pass for r in config["routers"] if ROUTERS[r].learned):
                jobs.append(Job("routing_features", bb, f"{bb}/{bench}/{model}", V + S))
            for method in config["baselines"]["methods"]:
                spec, block = BASELINES[method], config["baselines"][method]
                grid = len(block["alphas"]) if spec.alpha_grid else 1
                lambdas = len(block["lambdas"]) if spec.per_task_lambdas else 0  # each on its own task's val
                jobs.append(Job("evaluate_baseline", bb, f"{bb}/{bench}/{method}", lambdas * V + grid * V + S + V))
            routing = config["routing"]
            for router in config["routers"]:
                search = not ROUTERS[router].learned and str(routing["eta"]) == "auto"
                val_passes = min(int(routing["top_k"]), T) if search else 0  # one per m <= top_k, not per trial
                jobs.append(Job("evaluate_mass", bb, f"{bb}/{bench}/{router}", val_passes * V + S))
            jobs.append(Job("evaluate_batched", bb, f"{bb}/{bench}", S))
            jobs.append(Job("evaluate_tsvc", bb, f"{bb}/{bench}", 2 * S))  # k = floor(r / T) and the size budget
            moerging = config["moerging"]
            if "smile" in moerging["methods"]:
                jobs.append(Job("evaluate_smile", bb, f"{bb}/{bench}", S))
            if "wemoe" in moerging["methods"]:  # each adaptation step: one batch of every task
                adapted = int(moerging["wemoe"]["steps"]) * T * int(moerging["wemoe"]["batch_size"])
                jobs.append(Job("evaluate_wemoe", bb, f"{bb}/{bench}", adapted + S))
            # measure_cost: ceil(images / T) test images of each task; per round (one counted, then the timed
            # ones) the forward, the routing pass, MASS (both passes) and each MoErging method; MASS once before
            per_task = -(-int(config["cost"]["images"]) // T)
            N = sum(min(per_task, sizes[t].test) for t in tasks)
            passes = 4 + len(moerging["methods"])
            rounds = 1 + int(config["cost"]["repeats"])
            jobs.append(Job("measure_cost", bb, f"{bb}/{bench}", rounds * passes * N + 2 * N))
    return jobs


# ----------------------------------------------------------------------------------------------- rates


def measured_rates(config: Mapping, results: Path = ROOT / "benchmarks" / "results") -> dict[str, tuple[float, str]]:
    """Backbone -> (plain-forward images/s, source file) from GPU results of benchmarks/run.py."""
    rates: dict[str, tuple[float, str]] = {}
    for path in sorted(results.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if str(result.get("device", "")).upper().startswith("CPU") or not result.get("throughput"):
            continue
        rate = statistics.median(row["plain_forward_img_s"] for row in result["throughput"])
        for bb in config["run"]["backbones"]:
            if config["backbones"][bb]["arch"] == result.get("model"):
                rates[bb] = (rate, f"{path.relative_to(ROOT)} ({result.get('device')})")
    return rates


def parse_rates(pairs: Sequence[str]) -> dict[str, float]:
    rates = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            rates[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or rates[name] <= 0:
            raise SystemExit(f"--images-per-second takes BACKBONE=IMAGES_PER_SECOND, got {pair!r}")
    return rates


def result_files(results: Path = ROOT / "benchmarks" / "results") -> list[str]:
    return [p.name for p in sorted(results.glob("*.json"))]


def second_pass_cost(results: Path = ROOT / "benchmarks" / "results") -> list[str]:
    """The measured cost of a second-pass image in plain forwards, per result file (its range over cases)."""
    lines = []
    for path in sorted(results.glob("*.json")):
        try:
            result = json.loads(path.read_text())
            ratios = [row["second_pass_over_forward"] for row in result["throughput"]]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        lines.append(f"{min(ratios):.2f}-{max(ratios):.2f} plain forwards in {path.name} ({result.get('device')}, "
                     f"{result.get('model')})")
    return lines


# ------------------------------------------------------------------------------------------------ disk


@dataclass(frozen=True)
class Architecture:
    """What the disk estimate needs of a backbone: parameter counts and shapes of its towers."""

    clip_params: int
    visual_params: int
    matrix_shapes: tuple[tuple[int, int], ...]  # every 2-D float tensor of the image tower (task matrices)
    blocks: int
    width: int
    embed_dim: int
    image_size: int


def architecture(arch: str) -> Architecture:
    """Shapes from open_clip's config, built on the meta device (nothing allocated, nothing downloaded)."""
    import torch

    from mass.encoder import create_clip, image_size

    with torch.device("meta"):
        clip = create_clip(arch, device="meta")
    visual = clip.visual.state_dict()
    return Architecture(
        clip_params=sum(t.numel() for t in clip.state_dict().values()),
        visual_params=sum(t.numel() for t in visual.values()),
        matrix_shapes=tuple(tuple(t.shape) for t in visual.values() if t.ndim == 2 and t.is_floating_point()),
        blocks=len(clip.visual.transformer.resblocks), width=clip.visual.transformer.width,
        embed_dim=clip.visual.output_dim, image_size=image_size(arch))


def svd_cache_bytes(a: Architecture, rank_fraction: float) -> int:
    """One task's SVD cache (mass.svd.TaskComponents): U, s, V of k = floor(r * rank_fraction)
    components per task matrix plus the non-matrix tensors in full."""
    low = 0
    for m, n in a.matrix_shapes:
        k = max(1, math.floor(min(m, n) * rank_fraction))
        low += (m + n + 1) * k
    other = a.visual_params - sum(m * n for m, n in a.matrix_shapes)
    return (low + other) * FLOAT


def num_classes(config: Mapping, task: str) -> int:
    if config["data_source"] == "demo":
        from mass_pipeline.data.demo import class_phrases

        return len(class_phrases(task))
    from mass_pipeline.data import catalog

    return len(catalog.task_prompts(task)[0])


def disk(config: Mapping, sizes: Mapping[str, Splits], jobs: Sequence[Job]) -> pd.DataFrame:
    """Estimated bytes per folder and kind of file (raw hub downloads are not estimated)."""
    run = config["run"]
    all_tasks = list(dict.fromkeys(t for b in run["benchmarks"] for t in config["benchmarks"][str(b)]))
    demo = config["data_source"] == "demo"
    if demo:
        from mass_pipeline.data.demo import SIZE as pixels
    else:
        pixels = int(config["sources"].get("image_size") or 224)
    image = pixels * pixels * 3
    rows: list[dict] = []

    def add(folder: str, what: str, count: int, nbytes: float) -> None:
        rows.append({"folder": folder, "what": what, "files": count, "bytes": int(nbytes)})

    data = f"resources/data/{config['data_source']}"
    stored = sum(s.val + s.test for s in sizes.values())
    add(data, "val + test images (uint8)", 2 * len(sizes), stored * (image + INT))
    with_train = [t for t in all_tasks if demo or trained_here(config, t)]  # hub: prepare_train_split
    train = sum(sizes[t].train or 0 for t in with_train)
    if with_train:
        add(data, "train images (tasks fine-tuned here)", len(with_train), train * (image + INT))

    for bb in run["backbones"]:
        a = architecture(config["backbones"][bb]["arch"])
        ck = f"resources/checkpoints/{bb}"
        add(ck, "pretrained CLIP (both towers)", 1, a.clip_params * FLOAT)
        add(ck, "fine-tuned image towers", len(all_tasks), len(all_tasks) * a.visual_params * FLOAT)
        heads = sum(num_classes(config, t) * a.embed_dim * FLOAT for t in all_tasks)
        published = config["data_source"] == "hub" and config["finetuned"]["source"] == "hub"
        add(ck, "heads" + (" (published, used, built from text)" if published else ""), len(all_tasks),
            heads * (3 if published else 1))
        res = f"results/{bb}"
        add(res, f"SVD caches (rank_fraction {config['svd']['rank_fraction']})", len(all_tasks),
            len(all_tasks) * svd_cache_bytes(a, float(config["svd"]["rank_fraction"])))
        n_merges = (len(config["merge"]["epsilon_grid"]) + 1) * len(run["benchmarks"])
        add(res, "merges (dense deltas, each epsilon and none)", n_merges, n_merges * a.visual_params * FLOAT)
        locations = (2 * a.blocks * len(config["first_pass"]["ios"]) * len(config["first_pass"]["tokens"]))
        fp = [j for j in jobs if j.rule == "first_pass" and j.backbone == bb]
        fp_bytes = 0
        for j in fp:
            T = len(config["benchmarks"][j.wildcards.split("/")[1]])
            fp_bytes += j.images * ((a.embed_dim + T * locations) * FLOAT + 2 * INT)
        add(res, f"first passes ({locations} locations x T residuals + features)", len(fp), fp_bytes)
        rf = [j for j in jobs if j.rule == "routing_features" and j.backbone == bb]
        if rf:
            add(res, "routing features z_l (val + test)", len(rf), sum(j.images * (a.width * FLOAT + INT) for j in rf))
        routing = 0
        for bench in map(str, run["benchmarks"]):
            tasks = config["benchmarks"][bench]
            S = sum(sizes[t].test for t in tasks)
            routing += len(config["routers"]) * S * (len(tasks) + 2 * INT)
            routing += int(config["textspan"]["images_per_task"]) * len(tasks) * (image + INT)
        add(res, "routing npz, TEXTSPAN images", len(run["benchmarks"]) * (len(config["routers"]) + 1), routing)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- report


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


def plan(configfiles: Sequence[str], rates: Mapping[str, float] | None = None) -> dict:
    """The whole plan as plain data (what ``--json`` prints)."""
    config = load_config(configfiles)
    check_config(config, ROOT)
    run = config["run"]
    all_tasks = list(dict.fromkeys(t for b in run["benchmarks"] for t in config["benchmarks"][str(b)]))
    sizes = {t: split_sizes(config, t) for t in all_tasks}
    jobs = plan_jobs(config, sizes)
    unknown = sorted(set(rates or {}) - set(run["backbones"]))
    if unknown:
        raise SystemExit(f"--images-per-second names {unknown}, not among run.backbones {run['backbones']}")
    measured = measured_rates(config)
    per_second = {bb: (float(rates[bb]), "--images-per-second") if rates and bb in rates else measured.get(bb)
                  for bb in run["backbones"]}
    per_rule: dict[str, dict] = {}
    timed = all(per_second.values())
    for j in jobs:
        row = per_rule.setdefault(j.rule, {"rule": j.rule, "forward": FORWARD_KIND[j.rule], "jobs": 0, "images": 0,
                                           "gpu_hours": 0.0 if timed else None})
        row["jobs"] += 1
        row["images"] += j.images
        if timed:
            row["gpu_hours"] += j.images / per_second[j.backbone][0] / 3600
    backbones = []
    for bb in run["backbones"]:
        images = sum(j.images for j in jobs if j.backbone == bb)
        rate = per_second[bb]
        backbones.append({"backbone": bb, "images": images, "images_per_second": rate[0] if rate else None,
                          "rate_from": rate[1] if rate else None,
                          "gpu_hours": images / rate[0] / 3600 if rate else None})
    table = disk(config, sizes, jobs)
    folders = table.groupby("folder", sort=False)["bytes"].sum()
    return {
        "configfiles": list(configfiles),
        "splits": {t: asdict(s) for t, s in sizes.items()},
        "rules": list(per_rule.values()),
        "backbones": backbones,
        "total": {"jobs": len(jobs), "images": sum(j.images for j in jobs),
                  "gpu_hours": sum(b["gpu_hours"] for b in backbones) if timed else None},
        "disk": table.to_dict("records"),
        "disk_per_folder": {f: int(b) for f, b in folders.items()},
        "disk_total": int(table["bytes"].sum()),
        "jobs": [asdict(j) for j in jobs],
    }


def render(p: dict) -> str:
    out = [f"Compute plan for config.yaml{''.join(' + ' + f for f in p['configfiles'])}", ""]
    approx = [t for t, s in p["splits"].items() if not s["exact"]]
    rules = pd.DataFrame(p["rules"])
    rules["gpu_hours"] = rules["gpu_hours"].map(lambda h: "n/a" if h is None or pd.isna(h) else f"{h:.2f}")
    total = p["total"]
    rules.loc[len(rules)] = ["total", "", total["jobs"], total["images"],
                             "n/a" if total["gpu_hours"] is None else f"{total['gpu_hours']:.2f}"]
    rules["images"] = rules["images"].map(lambda n: f"{n:,}")
    out += ["Images forwarded per rule (all backbones):", rules.to_string(index=False), ""]
    bbs = pd.DataFrame(p["backbones"])
    bbs["images"] = bbs["images"].map(lambda n: f"{n:,}")
    bbs["images_per_second"] = bbs["images_per_second"].map(lambda r: "none measured" if r is None or pd.isna(r)
                                                           else f"{r:g}")
    bbs["gpu_hours"] = bbs["gpu_hours"].map(lambda h: "n/a" if h is None or pd.isna(h) else f"{h:.2f}")
    out += ["Per backbone:", bbs.drop(columns="rate_from").to_string(index=False)]
    for b in p["backbones"]:
        if b["rate_from"]:
            out.append(f"  {b['backbone']}: {b['images_per_second']:g} images/s from {b['rate_from']}")
    missing = [b["backbone"] for b in p["backbones"] if b["images_per_second"] is None]
    if missing:
        out.append(f"  No GPU throughput measured for {', '.join(missing)} (benchmarks/results holds "
                   f"{', '.join(result_files()) or 'nothing'}: no GPU result); for GPU-hours pass "
                   f"--images-per-second {' '.join(f'{bb}=<images/s>' for bb in missing)}, "
                   "or run benchmarks/run.py on the GPU.")
    out.append("  GPU-hours count every image as one plain forward. A second-pass image cost "
               + ("; ".join(second_pass_cost()) or "(not measured)") + ", from realistic to random task "
               "selections; a training step adds its backward.")
    out.append("")
    d = pd.DataFrame(p["disk"])
    d["size"] = d["bytes"].map(human)
    out += ["Disk (estimated; raw hub downloads under resources/raw not included):",
            d.drop(columns="bytes").to_string(index=False), ""]
    out += [f"  {folder}: {human(b)}" for folder, b in p["disk_per_folder"].items()]
    out.append(f"  total: {human(p['disk_total'])}")
    if approx:
        out += ["", f"Split sizes of {', '.join(approx)}: the catalog (mass/data/catalog.py) does not record the "
                    "hub copy's sizes, so their published val/test sizes stand in and their train split is not "
                    "counted on disk."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="+", default=[], help="config overlays, in order (as for snakemake)")
    parser.add_argument("--images-per-second", nargs="+", default=[], metavar="BACKBONE=N",
                        help="plain-forward throughput per backbone on the target GPU")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (every job included)")
    check_configfile_flags(sys.argv[1:] if argv is None else argv)  # as Snakemake: one flag, every file
    args = parser.parse_args(argv)
    p = plan(args.configfile, parse_rates(args.images_per_second))
    sys.stdout.write(json.dumps(p, indent=1) + "\n" if args.json else render(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
