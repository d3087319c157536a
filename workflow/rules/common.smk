# Path helpers: which rule produces what, decided from the config. Scripts never read config.

import csv
import importlib.util
import json
import os
import shlex

from mass_pipeline.editions import load_edition  # plain data, as these: importing them does not load torch
from mass_pipeline.methods import BASELINES as BASELINE_REGISTRY
from mass_pipeline.methods import ROUTERS as ROUTER_REGISTRY
from mass_pipeline.sources.layouts import layout as checkpoint_layout

BACKBONES = [str(b) for b in config["run"]["backbones"]]
BENCHMARKS = [str(b) for b in config["run"]["benchmarks"]]
EPSILONS = [str(e) for e in config["merge"]["epsilon_grid"]]
ROUTERS = list(config["routers"])
BASELINES = list(config["baselines"]["methods"])
MOERGING = list(config["moerging"]["methods"])
# Which first pass each router reads ("selected" TSV-M merge or "pretrained"); learned ones also need z_l.
ROUTER_FIRST_PASS = {r: ROUTER_REGISTRY[r].first_pass for r in ROUTERS}
LEARNED_ROUTERS = [r for r in ROUTERS if ROUTER_REGISTRY[r].learned]
# Static TSV-M's merge: MASS's unfiltered one where both see attention's in_proj whole, else its own.
STATIC_TSVM = "epsnone" if config["merge"]["attention"] == "in_proj" else "static"


wildcard_constraints:
    backbone="|".join(BACKBONES),
    bench="|".join(BENCHMARKS),
    merge="eps(" + "|".join(EPSILONS + ["none"]) + ")|static",
    fpmodel="eps(" + "|".join(EPSILONS + ["none"]) + ")|static|selected|pretrained",
    split="val|test",
    router="|".join(ROUTERS),
    method="|".join(BASELINES),


def arch(w):
    return config["backbones"][w.backbone]["arch"]


def tasks(w):
    return list(config["benchmarks"][w.bench])


def holds_its_inputs_mb(wildcards, input, copies: float = 2):
    """mem_mb of a job that holds the encoders, SVD components and first passes it reads (.safetensors,
    .npz) in memory: 3 GB plus ``copies`` times their size; data files are memory-mapped and not
    counted. Peaks measured on the dress rehearsal (ViT-B-32, 20 tasks; results/benchmarks/):
    evaluate_mass 4.3-4.5 GB (given ~4.9 GB), the other steps sized here 1.5-4.2 GB. Files not there yet
    count 0 (Snakemake evaluates resources again before it starts a job, when its inputs exist). On
    SLURM the profile's fixed sizes apply instead, evaluate_baseline's excepted."""
    held = [f for f in input if f.endswith((".safetensors", ".npz")) and os.path.exists(f)]
    return int(3000 + copies * sum(os.path.getsize(f) for f in held) / 2**20)


def baseline_mb(wildcards, input):
    """mem_mb of evaluate_baseline: 3 GB plus its method's ``memory_copies`` times one encoder (the
    largest it reads; mass_pipeline.methods: Consensus TA 10, the others 6). It reads the task vectors from their
    files layer by layer or one task at a time, so the request does not grow with T: ViT-B/32 ~5-6.5 GB,
    ViT-L/14 ~10-15 GB. Files not there yet count 0 (evaluated again before the job starts)."""
    sizes = [os.path.getsize(f) for f in input.finetuned if os.path.exists(f)]
    return int(3000 + BASELINE_REGISTRY[wildcards.method].memory_copies * max(sizes, default=0) / 2**20)


def check_selection():
    """Every selected backbone and benchmark must be defined: fail early, naming the key."""
    for name, table in (("backbones", BACKBONES), ("benchmarks", BENCHMARKS)):
        missing = [x for x in table if x not in config[name]]
        if missing:
            raise ValueError(f"config run.{name} lists {missing}, not defined under '{name}:' "
                             f"(defined: {sorted(config[name])})")


check_selection()


def check_results_edition():
    """A working directory holds one edition's results (results/<backbone>/... has no edition in its paths):
    refuse to run another edition over them, before any job, naming the way out."""
    for backbone in BACKBONES:
        path = f"results/{backbone}/provenance.csv"
        if not os.path.exists(path):
            continue
        with open(path, newline="") as fh:
            found = next(csv.DictReader(fh), {}).get("edition")
        if found not in (None, config["edition"]):
            raise ValueError(
                f"{path}: this directory holds the {found} edition's results for {backbone}, and the config asks "
                f"for the {config['edition']} edition (key `edition`). Run each edition in a working directory of "
                "its own (e.g. `git worktree add ../mass-final`, then run there), or delete results/ and "
                "resources/checkpoints/ here to start over")


check_results_edition()


def all_tasks():
    return list(dict.fromkeys(t for b in BENCHMARKS for t in config["benchmarks"][b]))


def data_root():
    return f"resources/data/{config['data_source']}"


def split_files(task, *splits):
    """Every file of a task's prepared splits, declared so that a deleted one is remade (read as ancient:
    remaking them reruns nothing downstream)."""
    return [ancient(f"{data_root()}/{task}/{split}_{kind}.npy") for split in splits for kind in ("images", "labels")]


def data_marker(task):
    """The validation and test splits every evaluation of ``task`` reads."""
    return split_files(task, "val", "test")


def train_split(task):
    return split_files(task, "train")


def pretrained(backbone):
    tag = config["backbones"][backbone]["pretrained"]
    return ancient(f"resources/checkpoints/{backbone}/pretrained_{tag}.safetensors")


def own_file(backbone, task):
    """The encoder file the config gives for ``task`` on ``backbone`` (finetuned.files), or None."""
    path = (config["finetuned"].get("files") or {}).get(backbone, {}).get(task)
    return os.path.expanduser(path) if path else None


def own_tasks(backbone):
    return [t for t in all_tasks() if own_file(backbone, t)]


def fetched(task):
    """Whether a task's fine-tuned encoder comes from the edition's source (else it is fine-tuned here; your
    own tasks always are, unless finetuned.files gives their encoder)."""
    return (config["finetuned"]["source"] == "hub" and task not in config["finetuned"]["refinetune"]
            and task not in OWN_TASKS)


def trained_here(backbone):
    return [t for t in all_tasks() if not fetched(t) and not own_file(backbone, t)]


def finetuned(backbone, task):
    if own_file(backbone, task):
        return ancient(f"resources/checkpoints/{backbone}/files/{task}.safetensors")
    from_hub = fetched(task)
    path = f"resources/checkpoints/{backbone}/{'hub' if from_hub else 'trained'}/{task}.safetensors"
    return ancient(path) if from_hub else path


def head(backbone, task):
    return f"resources/checkpoints/{backbone}/heads/{task}.safetensors"


def _catalog_file(name):
    """A data file of mass_pipeline.data, found without importing it (that would make every Snakemake
    start-up pay for importing torch): next to the Snakefile, else where mass_pipeline is installed."""
    local = os.path.join(workflow.basedir, "src", "mass_pipeline", "data", name)
    if os.path.exists(local):
        return local
    return os.path.join(importlib.util.find_spec("mass_pipeline").submodule_search_locations[0], "data", name)


# Heads several tasks share (STL10 + CIFAR10, paper supp. 8.1) and the tasks sharing them; none in an
# edition whose heads follow the sources' own classes (the final one: 11-class CIFAR10 and STL10 heads).
with open(_catalog_file("prompts.json")) as _fh:
    SHARED_HEADS = {} if load_edition(config["edition"]).class_spaces is not None else {
        name: sorted(e["label_maps"]) for name, e in json.load(_fh)["shared_heads"].items()}


def bench_head(backbone, task, bench_tasks):
    """A task's head in a benchmark: the shared head when all of its tasks are in the benchmark."""
    for name, members in SHARED_HEADS.items():
        if task in members and set(members) <= set(bench_tasks):
            return head(backbone, name)
    return head(backbone, task)


def head_data(task):
    """Prepared data a head is built from: its task's, or every member's for a shared head."""
    return [f for t in SHARED_HEADS.get(task, [task]) for f in data_marker(t)]


def components(backbone, task):
    return f"results/{backbone}/svd/{task}.safetensors"


def bench_inputs(w):
    """Files every benchmark-level step needs: data, heads, SVD components of its tasks."""
    return {
        "data": [f for t in tasks(w) for f in data_marker(t)],
        "heads": [bench_head(w.backbone, t, tasks(w)) for t in tasks(w)],
        "components": [components(w.backbone, t) for t in tasks(w)],
        "pretrained": pretrained(w.backbone),
    }


def bench_args(w, input):
    """Command-line options shared by the benchmark steps."""
    return (
        f"--model {arch(w)} --tasks {' '.join(tasks(w))} --data-dirs {data_root()} "
        f"--heads {' '.join(input.heads)} "
        f"--pretrained {input.pretrained} --batch-size {config['first_pass']['batch_size']} --seed {config['seed']}"
    )


def blocks(w):
    low, high = config["backbones"][w.backbone]["candidate_blocks"]
    return f"{low} {high}"


def quoted(values):
    return " ".join(shlex.quote(str(v)) for v in values)


def method_results(backbone, bench):
    base = f"results/{backbone}/{bench}/methods"
    return (
        [f"{base}/tsvm.json", f"{base}/mass_batched.json", f"{base}/tsvc.json", f"{base}/tsvc_size.json"]
        + [f"{base}/{m}.json" for m in BASELINES]
        + [f"{base}/mass_{r}.json" for r in ROUTERS]
        + [f"{base}/{m}.json" for m in MOERGING]
    )


def final_outputs():
    return [
        "results/tables/table2.tex",
        "results/tables/table2_vs_paper.tex",
        "results/tables/table3.tex",
        "results/tables/accuracy_vs_cost.tex",
        "figures/accuracy_vs_cost.pdf",
        *[f"figures/radar_{b}.pdf" for b in BENCHMARKS],
        *[f"figures/per_layer_{bb}_{b}.pdf" for bb in BACKBONES for b in BENCHMARKS],
        "figures/batched.pdf",
        *head_checks(),
    ]


def publishes_heads():
    """Whether the fine-tuned checkpoints' source publishes the heads they were trained against
    (mass_pipeline.sources.layouts: tall_masks does, crisostomi builds them from text)."""
    return checkpoint_layout(_SOURCES["finetuned_layout"]).publishes_heads


def projection_source(w):
    """theta_pre, for a source whose encoders lack the output projection (fusionbench: mass.hf_vision)."""
    return [pretrained(w.backbone)] if checkpoint_layout(_SOURCES["finetuned_layout"]).needs_projection else []


def head_checks():
    """Agreement of the heads built from text with the published ones (hub data only)."""
    if config["data_source"] != "hub" or not publishes_heads():
        return []
    return [f"results/{bb}/tasks/{t}/head_check.json" for bb in BACKBONES for t in all_tasks() if t not in OWN_TASKS]


def check_rank_fraction():
    """The SVD cache must hold k = floor(r / T) components for the smallest benchmark."""
    smallest = min(len(config["benchmarks"][b]) for b in BENCHMARKS)
    if config["svd"]["rank_fraction"] < 1 / smallest:
        raise ValueError(f"svd.rank_fraction={config['svd']['rank_fraction']} is below 1/{smallest}, the share "
                         f"of the smallest selected benchmark; set it to at least {1 / smallest:.4f}")


check_rank_fraction()


def _opt(flag, value):
    """A command-line option, or nothing when the config leaves it unset."""
    return f"{flag} {shlex.quote(str(value))}" if value else ""


def zeroshot_options(w):
    """theta_pre from the fine-tuned checkpoints' repository and revision when they come from the hub (and
    the source's base is fetched: fusionbench's is the backbone's own OpenAI weights)."""
    if config["finetuned"]["source"] != "hub" or not checkpoint_layout(_SOURCES["finetuned_layout"]).publishes_zeroshot:
        return ""
    revision = _opt("--zeroshot-revision", _SOURCES["finetuned_revision"])
    model_dir = _opt("--hub-model-dir", (_SOURCES.get("finetuned_model_dirs") or {}).get(w.backbone))
    return (f"--zeroshot-repo {_SOURCES['finetuned_repo']} --zeroshot-layout {_SOURCES['finetuned_layout']} "
            f"{revision} {model_dir}")


def _dataset_cfg(task):
    return (config.get("datasets") or {}).get(task) or {}


def prepare_options(w, input):
    """Options of ``mass_pipeline.data.prepare`` shared by the val/test and the train preparation."""
    orientation = _SOURCES["emnist_orientation"]
    return (f"--task {w.task} --raw {os.path.dirname(input.manifest)} --out resources/data/hub "
            f"--edition {config['edition']} "
            f"--image-size {_SOURCES.get('image_size', 224)} --emnist-orientation {orientation} "
            + _opt("--source-orientation", _dataset_cfg(w.task).get("source_orientation"))
            + (f" --max-images {_SOURCES['max_images']}" if _SOURCES.get("max_images") else ""))


_SOURCES = config["sources"]
_LOCK = _SOURCES["lock_file"]
_ENDPOINT = _opt("--endpoint", _SOURCES["hf_endpoint"])


# Your own tasks (config key `tasks`): prepared from your files (rule prepare_own_task) or from a hub dataset of
# yours (downloaded by rule download_own_task), fine-tuned here unless finetuned.files gives their encoder, heads
# built from text.
OWN_TASKS = sorted(config.get("tasks") or {})
OWN_TASK = "|".join(OWN_TASKS) or "(?!)"
OWN_HUB_TASK = "|".join(t for t in OWN_TASKS if config["tasks"][t].get("hub")) or "(?!)"


def except_own(pattern):
    """``pattern`` for a task wildcard, refusing the declared tasks (a lookahead up to the next non-word
    character, as the head rules do)."""
    return rf"(?!(?:{'|'.join(OWN_TASKS)})\b){pattern}" if OWN_TASKS else pattern


def own_raw(task):
    """Where a declared hub task's parquet files are downloaded (beside the catalog's)."""
    return f"resources/raw/{task}"


def own_task_files(w):
    """What a declared task is read from: its folder, its two CSV files, or its downloaded dataset's manifest."""
    block = config["tasks"][w.task]
    if block.get("folder"):
        return [os.path.expanduser(block["folder"])]
    if block.get("hub"):
        return [f"{own_raw(w.task)}/manifest.json"]
    return [os.path.expanduser(block["csv"][split]) for split in ("train", "test")]


def own_hub_options(w):
    """A declared hub dataset as the steps' options (mass_pipeline.steps._cli.add_hub_dataset_args; Snakemake's
    validation filled in the schema's defaults)."""
    hub = config["tasks"][w.task]["hub"]
    options = [f"--hub {hub['repo']} --revision {hub['revision']}",
               f"--train-split {quoted([hub['splits']['train']])} --test-split {quoted([hub['splits']['test']])}",
               f"--image-column {quoted([hub['image_column']])} --label-column {quoted([hub['label_column']])}",
               _opt("--data-dir", hub.get("data_dir"))]
    return " ".join(o for o in options if o)


def own_task_options(w):
    """The declaration as the step's options (mass_pipeline.steps._cli.own_task_parser; unset keys: the step's defaults)."""
    block = config["tasks"][w.task]
    if block.get("hub"):
        options = [own_hub_options(w), f"--raw {own_raw(w.task)}"]
    else:
        options = [f"--{'folder' if block.get('folder') else 'csv'} {quoted(own_task_files(w))}"]
    options += [f"--{key} {quoted(block[key])}" for key in ("classnames", "templates") if block.get(key)]
    options += [_opt("--val-size", block.get("val_size")), _opt("--max-images", _SOURCES.get("max_images")),
                f"--out {data_root()} --image-size {_SOURCES.get('image_size', 224)}"]
    return " ".join(o for o in options if o)


# Task names are checked by the scripts (mass_pipeline.data.catalog.TASKS) and configcheck; importing mass here
# would make every Snakemake start-up pay for importing torch.
_HUB_TASK = except_own("[A-Za-z0-9]+")


def first_pass_model_files(backbone, bench, fpmodel):
    """The merge(s) a first pass runs (none: pretrained; 'selected': every epsilon and the choice)."""
    if fpmodel == "selected":
        return {"merged": [f"results/{backbone}/{bench}/merge/eps{e}.safetensors" for e in EPSILONS],
                "selection": f"results/{backbone}/{bench}/selected_epsilon.json"}
    if fpmodel != "pretrained":
        return {"merged": [f"results/{backbone}/{bench}/merge/{fpmodel}.safetensors"]}
    return {}


def first_pass_inputs(w):
    return {**bench_inputs(w), **first_pass_model_files(w.backbone, w.bench, w.fpmodel)}


def first_pass_model_args(w, input):
    merged = f"--merged {' '.join(input.merged)}" if "merged" in input.keys() else ""
    return merged + (f" --selection {input.selection}" if "selection" in input.keys() else "")


def baseline_options(w):
    """A baseline's config block as its step's options (every key of mass_pipeline.methods.BASELINES' entry)."""
    block = config["baselines"][w.method]
    return " ".join(f"--{key.replace('_', '-')} {quoted(v) if isinstance(v, list) else shlex.quote(str(v))}"
                    for key, v in block.items())


def mass_first_passes(w):
    """First passes of the router's model; nn/mlp also get z_l, computed once for both."""
    model = ROUTER_FIRST_PASS[w.router]
    base = f"results/{w.backbone}/{w.bench}/first_pass/{model}"
    files = {**bench_inputs(w), "val_first_pass": f"{base}_val.npz", "test_first_pass": f"{base}_test.npz"}
    if w.router in LEARNED_ROUTERS:
        files["routing_features"] = f"results/{w.backbone}/{w.bench}/routing_features/{model}.npz"
    return files


def routing_features_option(w, input):
    return f"--routing-features {input.routing_features}" if "routing_features" in input.keys() else ""


def routing_location_args(w):
    """Options naming the routing location (the same for every step that needs it)."""
    r = config["routing"]
    layer = config["backbones"][w.backbone].get("routing_layer") or r["layer"]
    return (f"--layer {layer} --blocks {blocks(w)} --modules {' '.join(r['modules'])} "
            f"--io {r['io']} --token {r['token']}")


# TEXTSPAN's description pool: downloaded at a pinned commit (hub), or generated offline (demo).
_POOL = config["textspan"]["descriptions"]


def descriptions_file():
    return f"resources/descriptions/{config['data_source']}.txt"


def descriptions_checksum():
    """The pool's expected sha256 (and size) when the config pins them; else the lock file's."""
    if _POOL["sha256"] and _POOL["size"] is not None:
        return f"--sha256 {_POOL['sha256']} --size {_POOL['size']}"
    return _opt("--sha256", _POOL["sha256"])
