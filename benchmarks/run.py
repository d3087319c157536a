"""How close MASS is to two forward passes, on a real-size open_clip ViT with random weights.

Measures, on whatever device is present (one run, results as JSON plus a markdown table):
1. images/s of the plain pretrained forward, of the first pass with routing residuals at every
   layer (what the pipeline runs once, to feed the sweep, the baselines and every router), and
   of full per-sample MASS inference (routing pass: the TSV-M model up to the routing layer and
   the projection router; then the second pass), and the second pass alone, in two cases:
   "random", every sample selects a random subset of 1-3 tasks (every batch mixes many subsets:
   the worst case), and "realistic", selections shaped like the projection router's on real
   data (80% the true task alone, 15% with its one confusable partner, 5% with two random
   others; images come in runs of one true task, as a test set evaluated dataset by dataset).
   Subset cores are computed (and timed) before MASS is timed; MASS time / plain forward time.
   The steps are timed in interleaved rounds (best of ``--repeats``) so ratios share the load.
2. Building the SVD cache (library path, batched) against a plain torch.linalg.svd per matrix.
3. Merging a 3-task subset: the dense TSV-M weights (tsv_merge + apply_delta) and the factored
   subset core MASS uses.
4. Storage of what MASS keeps (pretrained + compressed task components) relative to pretrained.
5. Wall time of ``snakemake -n`` on the paper configuration.
Peak memory of the steps of items 1-3 is measured apart, each step in a fresh process.

Task matrices are synthetic: for the throughput runs, each task's truncated SVD factors are drawn
directly (random orthonormal U, V, decaying spectrum), since forward costs do not depend on the
weights' values; item 2 times the real SVD code path on dense synthetic task vectors.

    python benchmarks/run.py --out benchmarks/results/cpu-2core.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import moerging
import numpy as np
import torch

from mass.cost import best_times, count_macs, exact_merge_macs, sync, tokens_per_matrix
from mass.encoder import all_layers, create_visual, image_size
from mass.forward import encode, first_pass, layer_bases
from mass.mass_model import MassModel
from mass.routing import ProjectionRouter
from mass.second_pass import SubsetFactors
from mass.svd import LowRank, TaskComponents, components_per_task
from mass.task_vectors import LayerId, Location, TaskVector, is_matrix
from mass.training import default_device
from mass.tsv import apply_delta, tsv_merge

ROOT = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Peak memory while the ``with`` block runs, and how far it rose above the start (MiB).

    CUDA: the allocator's peak, reset at entry. CPU: the resident set's high-water mark (VmHWM),
    which Linux resets at entry when "5" is written to /proc/self/clear_refs; ``ru_maxrss`` alone
    never resets, so every step would report the process's peak so far. Where that file is
    missing (not Linux), the process's peak so far is reported and ``scope`` says so.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.scope = "step"
        self.start_mib = self.peak_mib = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mib = torch.cuda.memory_allocated() / 2**20
            return self
        self.start_mib = _proc_status_mib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        elif self.scope == "step":
            self.peak_mib = _proc_status_mib("VmHWM")
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10

    def report(self) -> dict:
        return {"peak_mib": self.peak_mib, "rise_mib": self.peak_mib - self.start_mib, "scope": self.scope}


def _proc_status_mib(field: str) -> float:
    """A kB field of /proc/self/status in MiB (0 where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return 0.0


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, object]:
    """Wall time of ``fn`` (the best of ``repeats`` runs: other load on the machine only adds time)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def orthonormal(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=g))[0]


def synthetic_components(pretrained: dict[str, torch.Tensor], rank_fraction: float,
                         g: torch.Generator) -> TaskComponents:
    """A task's truncated SVD drawn directly: random orthonormal factors, decaying spectrum."""
    matrices, others = {}, {}
    for name, w in pretrained.items():
        if is_matrix(name, w):
            k = max(1, int(min(w.shape) * rank_fraction))
            s = 0.05 * torch.linspace(1.0, 0.1, k)
            matrices[name] = LowRank(orthonormal(w.shape[0], k, g), s, orthonormal(w.shape[1], k, g))
        elif w.is_floating_point():
            others[name] = 1e-3 * torch.randn(w.shape, generator=g)
    return TaskComponents(matrices, others)


def synthetic_task_vector(pretrained: dict[str, torch.Tensor], rank: int, g: torch.Generator) -> TaskVector:
    """Dense task vector: a rank-``rank`` product plus small noise per matrix."""
    vector = {}
    for name, w in pretrained.items():
        if not w.is_floating_point():
            continue
        if is_matrix(name, w):
            r = min(rank, *w.shape)
            a, b = torch.randn(w.shape[0], r, generator=g), torch.randn(r, w.shape[1], generator=g)
            vector[name] = 1e-3 * (a @ b) / r + 1e-5 * torch.randn(w.shape, generator=g)
        else:
            vector[name] = 1e-3 * torch.randn(w.shape, generator=g)
    return TaskVector(vector)


def random_selection(n: int, num_tasks: int, max_tasks: int, g: torch.Generator) -> torch.Tensor:
    """Each sample selects a random subset of 1..max_tasks tasks (sizes uniform)."""
    sel = torch.zeros(n, num_tasks, dtype=torch.bool)
    sizes = torch.randint(1, max_tasks + 1, (n,), generator=g)
    for i, size in enumerate(sizes.tolist()):
        sel[i, torch.randperm(num_tasks, generator=g)[:size]] = True
    return sel


def realistic_selection(n: int, num_tasks: int, run: int, g: torch.Generator) -> torch.Tensor:
    """Router-like selections: runs of ``run`` images of one true task; 80% select it alone, 15%
    with a fixed confusable partner (like MNIST / EMNIST), 5% with two random other tasks."""
    sel = torch.zeros(n, num_tasks, dtype=torch.bool)
    partner = (torch.arange(num_tasks) + 1 + torch.randint(num_tasks - 1, (num_tasks,), generator=g)) % num_tasks
    true = torch.randperm(num_tasks, generator=g).repeat_interleave(run).repeat(n // (run * num_tasks) + 1)[:n]
    kind = torch.rand(n, generator=g)
    for i, t in enumerate(true.tolist()):
        sel[i, t] = True
        if 0.80 <= kind[i] < 0.95:
            sel[i, partner[t]] = True
        elif kind[i] >= 0.95:
            others = torch.randperm(num_tasks - 1, generator=g)[:2]
            sel[i, others + (others >= t).long()] = True
    return sel


def selection_cases(args, num_tasks: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"random": random_selection(args.images, num_tasks, args.max_tasks, g),
            "realistic": realistic_selection(args.images, num_tasks, args.task_run, g)}


def make_mass(args, device, visual, pretrained, comps) -> MassModel:
    """MassModel over ``visual`` with random heads (their values do not change any cost)."""
    T, g = len(comps), torch.Generator().manual_seed(args.seed)
    heads = [torch.randn(10, visual.output_dim, generator=g) for _ in range(T)]
    return MassModel(visual, pretrained, comps, heads, [f"task{t}" for t in range(T)], image_size(args.model),
                     device, cache_size=args.cache_size, dense_min_group=args.dense_min_group)


def routing_location(visual) -> LayerId:
    """Block 9's MLP input, the location the validation sweep picks most often for ViT-B."""
    return LayerId(min(9, len(visual.transformer.resblocks) - 1), "mlp")


class OfficialStrategy:
    """The official MASS implementation's second pass, rebuilt here from its description (no code
    of it is copied), to compare with this project's on the same work.

    Each batch is grouped by selected task subset; a subset without a model gets a full encoder
    copy holding theta_pre + alpha * TSV-M(subset), merged from the stored components with
    SVD-based polar factors (``tsv_merge``); at most ``max_models`` such copies are kept and the
    whole cache is flushed when one more is needed; each group runs through its subset's copy.
    """

    def __init__(self, args, device, pretrained, comps, alpha: float = 1.0, max_models: int = 6):
        self.args, self.device, self.pretrained, self.comps = args, device, pretrained, comps
        self.alpha, self.max_models = alpha, max_models
        self.models: dict[tuple[int, ...], torch.nn.Module] = {}

    def model(self, subset: tuple[int, ...]) -> torch.nn.Module:
        if subset not in self.models:
            if len(self.models) >= self.max_models:
                self.models.clear()
            delta, _ = tsv_merge([self.comps[t] for t in subset], len(self.comps), device=self.device)
            self.models[subset] = create_visual(self.args.model, apply_delta(self.pretrained, delta, self.alpha),
                                                self.device)
        return self.models[subset]

    def features(self, images: np.ndarray, selection: torch.Tensor) -> torch.Tensor:
        size, bs = image_size(self.args.model), self.args.batch_size
        out = None
        for start in range(0, len(images), bs):
            subsets, group_of = torch.unique(selection[start:start + bs], dim=0, return_inverse=True)
            for g, row in enumerate(subsets):
                idx = start + torch.nonzero(group_of == g).flatten()
                feats, _ = encode(self.model(tuple(torch.nonzero(row).flatten().tolist())), images[idx.numpy()],
                                  size, bs, self.device)
                out = torch.empty(len(images), feats.shape[1]) if out is None else out
                out[idx] = feats
        return out


def bench_official(args, device, pretrained, comps, images, cases, model: MassModel, best: dict) -> dict:
    """The official strategy (:class:`OfficialStrategy`, a fresh cache each run, best of
    ``--official-repeats``) on the same images and selections, its time over this project's second
    pass (subset cores cached beforehand, as MASS is timed) and over that pass plus the cores'
    computation, and how often the two predict the same (head, class)."""
    out = {}
    for case, selection in cases.items():
        best_s, feats = float("inf"), None
        for _ in range(args.official_repeats):
            official = OfficialStrategy(args, device, pretrained, comps)
            t, feats = timed(lambda sel=selection, o=official: o.features(images, sel), device)
            best_s = min(best_s, t)
        ours = model.predict(images, selection, args.batch_size)
        theirs = model.predict_features(feats, selection)
        same = (ours.task == theirs.task) & (ours.cls == theirs.cls)
        out[case] = {"official_second_pass_s": best_s,
                     "official_over_this_project": best_s / best[f"second_pass_{case}"],
                     "official_over_this_project_with_cores": best_s / (best[f"second_pass_{case}"]
                                                                        + best[f"cores_{case}"]),
                     "official_same_predictions": float(same.float().mean())}
    return out


def make_routing_pass(args, device, visual, comps, images) -> Callable[[], torch.Tensor]:
    """MASS's first pass: the routing layer's residuals only, stopping right after it, then the
    projection router (its real cost; the benchmark forces the selection mix afterwards)."""
    layer = routing_location(visual)
    bases = layer_bases(comps, [layer], len(comps))

    def routing_pass() -> torch.Tensor:
        _, res = first_pass(visual, images, image_size(args.model), bases, batch_size=args.batch_size,
                            device=device, routing_only=True)
        return ProjectionRouter().route_residuals(res[Location(layer, "cls")])
    return routing_pass


def bench_throughput(args, device, pretrained, comps, images, cases: dict[str, torch.Tensor]) -> list[dict]:
    """Item 1 for one benchmark size T = len(comps): one row per selection case.

    Every timed step runs once per round, rounds repeat ``args.repeats`` times and each step
    keeps its best time, so all ratios compare runs taken under the same machine load.
    """
    T, n, size = len(comps), len(images), image_size(args.model)
    visual = create_visual(args.model, pretrained, device)
    encode(visual, images[: args.batch_size], size, args.batch_size, device)  # warm-up
    bases = layer_bases(comps, all_layers(len(visual.transformer.resblocks)), T)
    model = make_mass(args, device, visual, pretrained, comps)
    t_setup, _ = timed(lambda: model.encoder, device)
    t_cores = {}
    for case, selection in cases.items():  # subset cores are cached before MASS is timed
        t_cores[case], _ = timed(lambda sel=selection: [model.encoder.factors.cores(
            tuple(torch.nonzero(row).flatten().tolist())) for row in torch.unique(sel, dim=0)], device)
    routing_pass = make_routing_pass(args, device, visual, comps, images)
    steps = {"forward": lambda: encode(visual, images, size, args.batch_size, device),
             "first_pass": lambda: first_pass(visual, images, size, bases, batch_size=args.batch_size, device=device),
             "routing_pass": routing_pass}
    for case, selection in cases.items():
        steps[f"second_pass_{case}"] = lambda sel=selection: model.predict(images, sel, args.batch_size)
        steps[f"mass_{case}"] = lambda sel=selection: (routing_pass(), model.predict(images, sel, args.batch_size))
    smile, wemoe = (moerging.make_smile(args, device, pretrained, comps), moerging.make_wemoe(args, device, pretrained,
                                                                                              comps))
    steps.update(moerging.steps(args, device, smile, wemoe, images))
    best = best_times(steps, args.repeats, device)
    best.update({f"cores_{case}": t for case, t in t_cores.items()})
    counted = ("forward", "routing_pass", "smile", "wemoe", *(f"mass_{case}" for case in cases))
    macs = {name: count_macs(steps[name]) for name in counted}
    tokens = tokens_per_matrix(visual, size)
    adaptation = moerging.wemoe_adaptation(args, device, wemoe, images)
    stored = moerging.storage(pretrained, comps, smile, wemoe)
    official = (bench_official(args, device, pretrained, comps, images, cases, model, best)
                if args.official_repeats else {})
    rows = []
    for case, selection in cases.items():
        _, counts = torch.unique(selection, dim=0, return_counts=True)
        rows.append({
            "tasks": T, "case": case, "images": n, "batch_size": args.batch_size, "repeats": args.repeats,
            "dense_min_group": args.dense_min_group, "distinct_subsets": len(counts),
            "dense_images": int(counts[counts >= args.dense_min_group].sum()),
            "mean_selected_tasks": float(selection.sum(1).float().mean()),
            "routing_key": f"{routing_location(visual)}.cls",
            "plain_forward_img_s": n / best["forward"], "first_pass_img_s": n / best["first_pass"],
            "mass_img_s": n / best[f"mass_{case}"],
            "first_pass_over_forward": best["first_pass"] / best["forward"],
            "routing_pass_over_forward": best["routing_pass"] / best["forward"],
            "second_pass_over_forward": best[f"second_pass_{case}"] / best["forward"],
            "mass_over_forward": best[f"mass_{case}"] / best["forward"],
            "mass_setup_s": t_setup, "subset_cores_s": t_cores[case], **official.get(case, {}),
            **floor_items(macs, best, case, exact_merge_macs(comps, selection, tokens)),
            "smile_over_forward": best["smile"] / best["forward"],
            "wemoe_over_forward": best["wemoe"] / best["forward"],
            "smile_macs_over_forward": macs["smile"] / macs["forward"],
            "wemoe_macs_over_forward": macs["wemoe"] / macs["forward"],
            **{f"wemoe_adaptation_{k}": v for k, v in adaptation.items()}, **stored,
        })
    return rows


def floor_items(macs: dict[str, int], best: dict[str, float], case: str, merge_macs: int) -> dict:
    """MASS's multiply-adds and its floor of exact per-sample merging (the routing pass, a forward and
    :func:`mass.cost.exact_merge_macs` for this case's selections), in forwards, and the measured time ratio
    over the floor."""
    floor = (macs["routing_pass"] + macs["forward"] + merge_macs) / macs["forward"]
    return {"mass_macs_over_forward": macs[f"mass_{case}"] / macs["forward"], "floor_macs_over_forward": floor,
            "mass_time_over_floor": best[f"mass_{case}"] / best["forward"] / floor}


def bench_svd(args, device, pretrained, g) -> dict:
    """Item 2: the SVD cache (library, batched by shape) against one plain SVD per matrix."""
    t_cache = t_plain = 0.0
    for _ in range(args.svd_tasks):
        tv = synthetic_task_vector(pretrained, args.synthetic_rank, g)
        t, _ = timed(lambda tv=tv: TaskComponents.from_task_vector(tv, args.rank_fraction, device), device)
        t_cache += t
        mats = matrices(tv, device)
        t, _ = timed(lambda mats=mats: plain_svds(mats), device)
        t_plain += t
    return {"tasks_timed": args.svd_tasks, "cache_s": t_cache, "plain_svd_s": t_plain,
            "cache_s_per_task": t_cache / args.svd_tasks, "plain_svd_s_per_task": t_plain / args.svd_tasks,
            "cache_s_20_tasks_est": 20 * t_cache / args.svd_tasks,
            "plain_svd_s_20_tasks_est": 20 * t_plain / args.svd_tasks}


MERGE_SUBSET = (0, 1, 2)


def dense_merge(pretrained: dict[str, torch.Tensor], comps: list[TaskComponents], device: torch.device) -> dict:
    """Dense theta_pre + TSV-M(MERGE_SUBSET) weights, as a merge baseline would build them."""
    return apply_delta(pretrained, tsv_merge([comps[i] for i in MERGE_SUBSET], len(comps), device=device)[0])


def matrices(tv: TaskVector, device: torch.device) -> list[torch.Tensor]:
    return [m.to(device) for name, m in tv.vector.items() if is_matrix(name, m)]


def plain_svds(mats: list[torch.Tensor]) -> list:
    return [torch.linalg.svd(m, full_matrices=False) for m in mats]


def bench_merge(device, pretrained, comps) -> dict:
    """Item 3: merged weights for a 3-task subset, dense (tsv_merge) and factored (subset core)."""
    t_dense, _ = timed(lambda: dense_merge(pretrained, comps, device), device)
    factors = SubsetFactors(comps, device=device)
    t_core, _ = timed(lambda: factors.cores(MERGE_SUBSET), device)
    return {"tasks": len(comps), "subset": list(MERGE_SUBSET), "dense_weights_s": t_dense, "factored_core_s": t_core}


MEMORY_STEPS = ("forward", "mass_random", "mass_realistic", "smile", "wemoe", "merge_dense", "merge_factored")
SVD_MEMORY_STEPS = ("svd_cache", "svd_plain")
MEMORY_LABELS = {"forward": "plain forward", "mass_random": "MASS, random mix (setup included)",
                 "mass_realistic": "MASS, realistic mix (setup included)",
                 "smile": "SMILE (model built included)", "wemoe": "WEMoE (model built included)",
                 "merge_dense": "dense TSV-M weights of a 3-task subset",
                 "merge_factored": "factored subset core (Gram blocks included)",
                 "svd_cache": "SVD cache of one task (library path)", "svd_plain": "plain SVD of one task's matrices"}


def bench_memory(args, cases_by_t: dict[int, dict[str, torch.Tensor]]) -> dict:
    """Items 1-3, memory: every step's peak in a fresh interpreter of its own (see step_memory)."""
    threads = torch.get_num_threads()
    jobs = [(step, T) for T in args.tasks for step in MEMORY_STEPS]
    jobs += [(step, max(args.tasks)) for step in SVD_MEMORY_STEPS] if args.svd_tasks else []
    memory: dict[str, dict[str, dict]] = {}
    for step, T in jobs:  # a new executor per step: a fresh interpreter, whose workers may start loaders
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            selection = cases_by_t[T].get(step.removeprefix("mass_"))
            memory.setdefault(step, {})[f"T{T}"] = pool.submit(
                step_memory, step, vars(args), T, threads, selection).result()
    return memory


def step_memory(step: str, opts: dict, num_tasks: int, threads: int, selection: torch.Tensor | None) -> dict:
    """Peak memory of one step, run in a fresh (spawned) interpreter after its inputs are built.

    In a long-lived process the allocator keeps freed pages mapped, so a later step reuses what
    an earlier one left and its own need does not show; a fresh process sees it whole. Inputs
    (pretrained weights, task components, images, the task vector) exist before the measurement;
    MASS's own setup (Gram blocks, subset cores) is part of its step.
    """
    args = argparse.Namespace(**opts)
    torch.set_num_threads(threads)
    device, g = torch.device(default_device()), torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    pretrained = create_visual(args.model).state_dict()
    if step.startswith("svd"):
        tv = synthetic_task_vector(pretrained, args.synthetic_rank, g)
        mats = matrices(tv, device)
        run = {"svd_cache": lambda: TaskComponents.from_task_vector(tv, args.rank_fraction, device),
               "svd_plain": lambda: plain_svds(mats)}[step]
    else:
        comps = [synthetic_components(pretrained, args.rank_fraction, g) for _ in range(num_tasks)]
        if step.startswith("merge"):
            run = {"merge_dense": lambda: dense_merge(pretrained, comps, device),
                   "merge_factored": lambda: SubsetFactors(comps, device=device).cores(MERGE_SUBSET)}[step]
        else:
            size = image_size(args.model)
            images = benchmark_images(args)
            visual = create_visual(args.model, pretrained, device)
            if step == "forward":
                def run() -> object:
                    return encode(visual, images, size, args.batch_size, device)
            elif step in ("smile", "wemoe"):
                def run() -> object:
                    model = {"smile": moerging.make_smile, "wemoe": moerging.make_wemoe}[step](
                        args, device, pretrained, comps)
                    return moerging.infer(args, device, model, images)
            else:
                def run() -> object:
                    model = make_mass(args, device, visual, pretrained, comps)
                    make_routing_pass(args, device, visual, comps, images)()
                    return model.predict(images, selection, args.batch_size)
    with PeakMemory(device) as mem:
        run()
    return mem.report()


def benchmark_images(args) -> np.ndarray:
    """Random uint8 images at the model's input size (what the data loader would hand over)."""
    size = image_size(args.model)
    return np.random.default_rng(args.seed).integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)


def bench_storage(pretrained, comps_by_t: dict[int, list[TaskComponents]], rank_fraction: float) -> dict:
    """Item 4: parameters MASS keeps relative to the pretrained encoder alone, split into the
    matrices' singular triplets and the per-task dense deltas of the other tensors (patch conv,
    biases, LayerNorms, class embedding), which TSV-M averages over the selected tasks."""
    pre = sum(w.numel() for w in pretrained.values())
    out = {"pretrained_params": pre}
    for T, comps in comps_by_t.items():
        triplets = sum(components_per_task(min(lr.U.shape[0], lr.V.shape[0]), T) * (lr.U.shape[0] + lr.V.shape[0] + 1)
                       for c in comps for lr in c.matrices.values())
        dense = sum(t.numel() for c in comps for t in c.others.values())
        out[f"T{T}_triplets_over_pretrained"] = triplets / pre
        out[f"T{T}_dense_deltas_over_pretrained"] = dense / pre
        out[f"T{T}_mass_over_pretrained"] = (pre + triplets + dense) / pre
    out["svd_cache_rank_fraction"] = rank_fraction
    return out


def bench_dry_run() -> dict:
    """Item 5: ``snakemake -n`` on config.yaml (the paper's 3 x 3 grid).

    Where SLURM's client tools are installed, Snakemake's SLURM executor plugin runs
    ``scontrol show config`` when imported, which waits ~9 s for a controller that is down:
    that call is timed too (``scontrol_s``), to tell the two costs apart.
    """
    scontrol = shutil.which("scontrol")
    scontrol_s = None
    if scontrol:
        start = time.perf_counter()
        subprocess.run([scontrol, "show", "config"], capture_output=True)
        scontrol_s = time.perf_counter() - start
    exe = Path(sys.executable).with_name("snakemake")
    start = time.perf_counter()
    proc = subprocess.run([str(exe), "-n", "--cores", "all"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "returncode": proc.returncode, "scontrol_s": scontrol_s,
            "tail": proc.stdout.strip().splitlines()[-3:]}


def markdown(result: dict) -> str:
    repeats = result["throughput"][0]["repeats"] if result["throughput"] else 1
    lines = [f"Device: {result['device']}; {result['date']}; model {result['model']}; "
             f"throughput: best of {repeats} runs", "",
             "| T | case | images | subsets | images on dense path | forward img/s | MASS img/s "
             "| first pass (all layers)/fwd | routing pass/fwd | second pass/fwd | MASS/fwd | subset cores s |",
             "|" + "---|" * 12]
    for r in result["throughput"]:
        lines.append(f"| {r['tasks']} | {r['case']} | {r['images']} | {r['distinct_subsets']} "
                     f"| {r['dense_images']} | {r['plain_forward_img_s']:.2f} | {r['mass_img_s']:.2f} "
                     f"| {r['first_pass_over_forward']:.2f} | {r['routing_pass_over_forward']:.2f} "
                     f"| {r['second_pass_over_forward']:.2f} | {r['mass_over_forward']:.2f} "
                     f"| {r['subset_cores_s']:.2f} |")
    official = [r for r in result["throughput"] if "official_second_pass_s" in r]
    if official:
        lines += ["", "Second pass, the official implementation's strategy (a model copy per subset, at most 6 "
                  "kept) against this project's on the same images and selections:", "",
                  "| T | case | official s | official / this project | same, this project's subset cores "
                  "included | same predictions |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['tasks']} | {r['case']} | {r['official_second_pass_s']:.1f} "
                  f"| {r['official_over_this_project']:.1f} | {r['official_over_this_project_with_cores']:.1f} "
                  f"| {r['official_same_predictions']:.3f} |" for r in official]
    lines += moerging_markdown(result["throughput"])
    if "svd" in result:
        s = result["svd"]
        lines += ["", f"SVD cache: {s['cache_s_per_task']:.1f} s/task (batched library path) vs "
                  f"{s['plain_svd_s_per_task']:.1f} s/task (plain SVD per matrix); 20 tasks est. "
                  f"{s['cache_s_20_tasks_est']:.0f} s vs {s['plain_svd_s_20_tasks_est']:.0f} s "
                  f"({s['tasks_timed']} task(s) timed)"]
    for m in result.get("merge", []):
        lines.append(f"Merge of tasks {m['subset']} (T={m['tasks']}): dense weights {m['dense_weights_s']:.2f} s "
                     f"factored core {m['factored_core_s']:.2f} s")
    if "storage" in result:
        st = result["storage"]
        lines.append("Storage (pretrained + components) / pretrained: " + ", ".join(
            f"T={T}: {st[f'T{T}_mass_over_pretrained']:.2f}x (matrix triplets "
            f"{st[f'T{T}_triplets_over_pretrained']:.2f}x, other tensors' dense deltas "
            f"{st[f'T{T}_dense_deltas_over_pretrained']:.2f}x)" for T in result["args"]["tasks"]))
    if "memory" in result:
        lines += ["", f"Peak {result['memory_kind']} in MiB while a step runs ({result['args']['images']} images "
                  "where images are used), each in a fresh process with its inputs built (+ the rise above them: "
                  "what the step itself needs)", "",
                  "| step | " + " | ".join(f"T={T}" for T in result["args"]["tasks"]) + " |",
                  "|---|" + "---|" * len(result["args"]["tasks"])]
        for step, by_t in result["memory"].items():
            cells = [_memory(by_t[f"T{T}"]) if f"T{T}" in by_t else "" for T in result["args"]["tasks"]]
            lines.append(f"| {MEMORY_LABELS[step]} | " + " | ".join(cells) + " |")
    if "snakemake_dry_run" in result:
        d = result["snakemake_dry_run"]
        slurm = ("" if d["scontrol_s"] is None
                 else f"; `scontrol show config`, which the SLURM plugin runs at import: {d['scontrol_s']:.1f} s")
        lines.append(f"`snakemake -n` (paper config): {d['wall_s']:.1f} s (exit {d['returncode']}){slurm}")
    return "\n".join(lines) + "\n"


def moerging_markdown(rows: list[dict]) -> list[str]:
    """MASS beside SMILE and WEMoE on the same images and rounds, and MASS over its floor."""
    lines = ["", "MASS beside the other MoErging methods on the same images, in the same interleaved rounds (time and "
             "torch-counted multiply-adds per image, in plain forwards; floor: routing pass + forward + exact "
             "per-sample merging at its cheapest, mass.cost.exact_merge_macs):", "",
             "| T | case | MASS time | SMILE time | WEMoE time | MASS MACs | floor MACs | MASS time / floor "
             "| SMILE MACs | WEMoE MACs | storage MASS / SMILE / WEMoE | WEMoE adaptation s/step |",
             "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['tasks']} | {r['case']} | {r['mass_over_forward']:.2f} | {r['smile_over_forward']:.2f} "
                     f"| {r['wemoe_over_forward']:.2f} | {r['mass_macs_over_forward']:.2f} "
                     f"| {r['floor_macs_over_forward']:.2f} | {r['mass_time_over_floor']:.2f} "
                     f"| {r['smile_macs_over_forward']:.2f} | {r['wemoe_macs_over_forward']:.2f} "
                     f"| {r['mass_storage_over_pretrained']:.2f} / {r['smile_over_pretrained']:.2f} / "
                     f"{r['wemoe_over_pretrained']:.2f} | {r['wemoe_adaptation_s_per_step']:.1f} |")
    return lines


def _memory(report: dict) -> str:
    """"peak (+rise)" in MiB; a process-wide peak (no per-step reset on this OS) is marked so."""
    text = f"{report['peak_mib']:.0f} (+{report['rise_mib']:.0f})"
    return text if report["scope"] == "step" else f"{text}, process peak so far"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON path; the markdown table goes next to it (.md)")
    parser.add_argument("--model", default="ViT-B-32-quickgelu")
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 20])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tasks", type=int, default=3, help="largest random task subset a sample selects")
    parser.add_argument("--task-run", type=int, default=32, help="realistic case: images per true-task run")
    parser.add_argument("--dense-min-group", type=int, default=12, help="MassModel's dense-path threshold")
    parser.add_argument("--cache-size", type=int, default=256, help="subset cores MassModel keeps")
    parser.add_argument("--rank-fraction", type=float, default=0.125, help="components kept per matrix")
    parser.add_argument("--svd-tasks", type=int, default=1, help="tasks whose SVD cache build is timed (0: skip)")
    parser.add_argument("--synthetic-rank", type=int, default=64)
    parser.add_argument("--no-dry-run", action="store_true", help="skip the snakemake -n timing")
    parser.add_argument("--throughput-only", action="store_true",
                        help="time the passes only (no merge, storage, SVD, memory or dry-run sections): "
                             "for repeated runs whose median decides the MASS / forward ratio")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, few images and tasks")
    parser.add_argument("--repeats", type=int, default=3, help="throughput timings: best of this many runs")
    parser.add_argument("--official-repeats", type=int, default=1,
                        help="runs of the official implementation's strategy per case, best kept (0: skip)")
    parser.add_argument("--wemoe-steps", type=int, default=1,
                        help="WEMoE adaptation steps timed (after one warm-up step), the best kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.model, args.tasks, args.images, args.batch_size, args.svd_tasks = "mass-tiny-vit", [4], 12, 5, 1
        args.rank_fraction, args.task_run, args.dense_min_group = 0.25, 4, 3
    device = torch.device(default_device())
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    pretrained = create_visual(args.model).state_dict()
    images = benchmark_images(args)
    all_comps = [synthetic_components(pretrained, args.rank_fraction, g) for _ in range(max(args.tasks))]
    comps_by_t = {T: all_comps[:T] for T in args.tasks}
    cases_by_t = {T: selection_cases(args, T, g) for T in args.tasks}

    result = {"date": datetime.date.today().isoformat(), "model": args.model, "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if device.type == "cuda"
              else f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
              "memory_kind": "CUDA allocated memory" if device.type == "cuda" else "resident set size",
              "args": vars(args)}
    result["throughput"] = [row for T in args.tasks
                            for row in bench_throughput(args, device, pretrained, comps_by_t[T], images,
                                                        cases_by_t[T])]
    if not args.throughput_only:
        result["merge"] = [bench_merge(device, pretrained, comps_by_t[T]) for T in args.tasks]
        result["storage"] = bench_storage(pretrained, comps_by_t, args.rank_fraction)
        if args.svd_tasks:
            result["svd"] = bench_svd(args, device, pretrained, g)
        result["memory"] = bench_memory(args, cases_by_t)
        if not args.no_dry_run:
            result["snakemake_dry_run"] = bench_dry_run()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
