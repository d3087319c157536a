"""Storage and merge error of the SVD cache stored in half precision (issue 21, item 2).

On an open_clip ViT-B-32 (``ViT-B-32-quickgelu``, random weights: only shapes matter for storage)
with T = 8 and 20 synthetic tasks of k = floor(r / T) components per matrix:

1. storage: (pretrained in float32 + what MASS keeps) / pretrained, in bytes, for the components
   (U, V; singular values always float32) and the other tensors' per-task dense deltas each in
   float32, float16 or bfloat16;
2. error: the merged weights from half-stored components (upcast, float32 compute, as
   ``TaskComponents.load`` gives them) against those from float32 components, for the TSV-M merge
   of all T tasks (``tsv_merge``) and MASS's merge of a 3-task subset (``SubsetFactors.delta``, the
   benchmark's k), as ||delta_half - delta_32|| / ||delta_32|| and / ||theta_32|| (merged weights).

Tasks share directions (each task's U and V are the orthonormalised sum of a shared random basis
and their own), so the polar factors are not perfectly conditioned, as with real tasks; the others'
deltas are 1e-3 * N(0, 1) as in benchmarks/run.py. With ``--components DIR`` it reads a real
pipeline SVD cache (``results/<backbone>/svd``) instead and also reports what is exactly
redundant there (zero deltas, tensors identical across tasks).

    python benchmarks/storage_dtype.py --out benchmarks/results/storage-dtype-cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from mass.second_pass import SubsetFactors
from mass.svd import STORAGE_DTYPES, LowRank, TaskComponents, components_per_task, stored_dtype
from mass.task_vectors import is_matrix, visual_state_dict
from mass.tsv import tsv_merge

HALF = ("float16", "bfloat16")
SUBSET = (0, 1, 2)


def vit_b32() -> dict[str, torch.Tensor]:
    import open_clip

    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    return {k: v.detach().float() for k, v in visual_state_dict(model.state_dict()).items()}


def orthonormal(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(x)[0]


def synthetic(pretrained: dict[str, torch.Tensor], num_tasks: int, shared: float, seed: int) -> list[TaskComponents]:
    """``num_tasks`` tasks of k = floor(r / T) components, sharing directions with weight ``shared``."""
    g = torch.Generator().manual_seed(seed)
    common = {n: (torch.randn(w.shape[0], min(w.shape), generator=g),
                  torch.randn(w.shape[1], min(w.shape), generator=g))
              for n, w in pretrained.items() if is_matrix(n, w)}
    tasks = []
    for _ in range(num_tasks):
        matrices, others = {}, {}
        for name, w in pretrained.items():
            if is_matrix(name, w):
                k = components_per_task(min(w.shape), num_tasks)
                cu, cv = common[name]
                u = orthonormal(shared * cu[:, :k] + torch.randn(w.shape[0], k, generator=g))
                v = orthonormal(shared * cv[:, :k] + torch.randn(w.shape[1], k, generator=g))
                matrices[name] = LowRank(u, 0.05 * torch.linspace(1.0, 0.1, k), v)
            elif w.is_floating_point():
                others[name] = 1e-3 * torch.randn(w.shape, generator=g)
        tasks.append(TaskComponents(matrices, others))
    return tasks


def storage(pretrained: dict[str, torch.Tensor], comps: list[TaskComponents], num_tasks: int) -> dict:
    """Bytes of pretrained (float32) + components, over pretrained; U, V and deltas in each dtype."""
    pre = 4 * sum(w.numel() for w in pretrained.values())
    shapes = [(lr.U.shape[0], lr.V.shape[0]) for c in comps for lr in c.matrices.values()]
    uv = sum(components_per_task(min(m, n), num_tasks) * (m + n) for m, n in shapes)
    s = sum(components_per_task(min(m, n), num_tasks) for m, n in shapes)
    dense = {name: sum(c.others[name].numel() for c in comps) for name in comps[0].others}
    conv = sum(v for n, v in dense.items() if n.endswith("conv1.weight"))
    size = {d: torch.empty((), dtype=t).element_size() for d, t in STORAGE_DTYPES.items()}
    out = {"pretrained_bytes": pre, "dense_deltas_params": sum(dense.values()), "patch_conv_params": conv}
    for tri in STORAGE_DTYPES:
        for oth in STORAGE_DTYPES:
            total = pre + size[tri] * uv + 4 * s + size[oth] * sum(dense.values())
            out[f"triplets_{tri}_others_{oth}"] = total / pre
        out[f"triplets_{tri}_over_pretrained"] = (size[tri] * uv + 4 * s) / pre
        out[f"others_{tri}_over_pretrained"] = size[tri] * sum(dense.values()) / pre
        out[f"patch_conv_{tri}_over_pretrained"] = size[tri] * conv / pre
    return out


def rel_errors(ref: dict[str, torch.Tensor], test: dict[str, torch.Tensor],
               pretrained: dict[str, torch.Tensor]) -> dict:
    diff2 = {n: float((test[n] - ref[n]).double().square().sum()) for n in ref}
    ref2 = {n: float(ref[n].double().square().sum()) for n in ref}
    theta2 = sum(float((pretrained[n].double() + ref[n].double()).square().sum()) for n in ref)
    per = {n: math.sqrt(diff2[n] / ref2[n]) if ref2[n] > 0 else 0.0 for n in ref}
    worst = max(per, key=per.get)
    conv = [n for n in ref if n.endswith("conv1.weight")]
    mats = [n for n in ref if is_matrix(n, ref[n])]
    rest = [n for n in ref if n not in mats]
    return {"delta_rel": math.sqrt(sum(diff2.values()) / sum(ref2.values())),
            "matrices_delta_rel": math.sqrt(sum(diff2[n] for n in mats) / sum(ref2[n] for n in mats)),
            "others_delta_rel": math.sqrt(sum(diff2[n] for n in rest) / sum(ref2[n] for n in rest)),
            "delta_rel_worst_tensor": per[worst], "worst_tensor": worst,
            "patch_conv_delta_rel": per[conv[0]] if conv else None,
            "weights_rel": math.sqrt(sum(diff2.values()) / theta2)}


def subset_delta(comps: list[TaskComponents], subset: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """MASS's merged delta of ``subset`` (benchmark k), dense, as the second pass applies it."""
    factors = SubsetFactors(comps)
    out = {name: factors.delta(name, subset) for name in factors.matrices}
    out.update({name: t[list(subset)].mean(0) for name, t in factors.others.items()})
    return out


def errors(pretrained: dict[str, torch.Tensor], comps: list[TaskComponents]) -> dict:
    out = {}
    ref_tsv = tsv_merge(comps)[0]
    ref_sub = subset_delta(comps, SUBSET)
    for dtype in HALF:
        rounded = [c.rounded(dtype) for c in comps]
        out[f"tsvm_{dtype}"] = rel_errors(ref_tsv, tsv_merge(rounded)[0], pretrained)
        out[f"mass_subset_{dtype}"] = rel_errors(ref_sub, subset_delta(rounded, SUBSET), pretrained)
    return out


def redundancy(comps: list[TaskComponents]) -> dict:
    """Exact savings: deltas that are all zero, and other tensors identical in every task."""
    zero = sorted(n for n in comps[0].others if all(not c.others[n].any() for c in comps))
    same = sorted(n for n in comps[0].others if all(torch.equal(c.others[n], comps[0].others[n]) for c in comps[1:]))
    subnormal = {d: sum(int(((t != 0) & (t.abs() < torch.finfo(STORAGE_DTYPES[d]).tiny)).sum())
                        for c in comps for t in c.others.values()) for d in HALF}
    total = sum(t.numel() for c in comps for t in c.others.values())
    return {"zero_deltas": zero, "identical_across_tasks": same,
            "others_below_smallest_normal": {d: n / total for d, n in subnormal.items()}}


def real_cache(folder: Path, pretrained_path: str | None) -> dict:
    """The same measurements on a pipeline SVD cache folder (every task's file)."""
    from mass.io import load_tensors

    paths = sorted(folder.glob("*.safetensors"))
    comps = [TaskComponents.load(p) for p in paths]
    out = {"files": [p.name for p in paths], "stored_dtype": sorted({stored_dtype(p) for p in paths}),
           "file_bytes": sum(p.stat().st_size for p in paths)}
    out["redundancy"] = redundancy(comps)
    if pretrained_path:
        pre = {k: v.float() for k, v in visual_state_dict(load_tensors(pretrained_path)).items()
               if v.is_floating_point()}
        out["pretrained_bytes"] = 4 * sum(v.numel() for v in pre.values())
        out["files_over_pretrained"] = out["file_bytes"] / out["pretrained_bytes"]
        T = len(comps)
        out["storage"] = storage(pre, comps, T)
        if out["stored_dtype"] == ["float32"]:
            out["errors"] = errors(pre, comps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 20])
    parser.add_argument("--shared", type=float, default=1.0, help="weight of the directions tasks share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--components", type=Path, help="a pipeline SVD cache folder to measure instead")
    parser.add_argument("--pretrained", help="its pretrained encoder (with --components)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.components:
        result = {"components": str(args.components), **real_cache(args.components, args.pretrained)}
    else:
        pretrained = vit_b32()
        result = {"model": "ViT-B-32-quickgelu (random weights)", "shared": args.shared}
        for T in args.tasks:
            comps = synthetic(pretrained, T, args.shared, args.seed + T)
            result[f"T{T}"] = {"storage": storage(pretrained, comps, T), "errors": errors(pretrained, comps)}
            print(json.dumps({f"T{T}": result[f"T{T}"]}, indent=1), flush=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
