"""Step measure_cost: what each method of Table 2 costs at inference on one backbone and benchmark.

On ``--images`` of the benchmark's test images (the same number from every task, in benchmark order), in
one run: multiply-adds (torch's count, :func:`mass.cost.count_macs`) and wall time (best of ``--repeats``
interleaved rounds) of the plain pretrained forward, of MASS with the projection router (the routing pass
up to the routing location it chose, then the second pass with the selections it made on these images),
of SMILE and of WEMoE (each task's images in its own batches, as evaluated); and what every method keeps,
in multiples of the pretrained encoder's parameters. The static merges and the endpoints run the plain
forward's network, so their costs are the forward's by construction (``basis`` says which numbers were
measured). The routing pass runs theta_pre's weights up to the routing location: the first-pass model's
weights change none of its cost.
"""

from __future__ import annotations

import numpy as np
import torch

from mass.cost import best_times, count_macs, exact_merge_macs, held_parameters, mass_parameters, tokens_per_matrix
from mass.data.store import RowSubset
from mass.encoder import create_visual, image_size
from mass.forward import encode, first_pass, layer_bases, log_images_forwarded
from mass.heads import load_heads
from mass.io import load_arrays, load_tensors, write_json
from mass.mass_model import MassModel
from mass.routing import ProjectionRouter
from mass.smile import SmileModel
from mass.svd import load_components
from mass.task_vectors import LayerId, Location, TaskVectorFiles, visual_state_dict
from mass.training import default_device
from mass.wemoe import from_task_vectors, predict
from mass_pipeline.data.benchmark import load_benchmark_split
from mass_pipeline.methods import MOERGING, TABLE2_ROWS
from mass_pipeline.results import MethodResult
from mass_pipeline.steps._cli import add_attention_arg, benchmark_parser, setup


def sample_rows(task: torch.Tensor, num_tasks: int, images: int) -> np.ndarray:
    """The first ceil(images / T) test rows of every task, in benchmark order."""
    per_task = -(-images // num_tasks)
    return np.concatenate([np.flatnonzero(task.numpy() == t)[:per_task] for t in range(num_tasks)])


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--components", nargs="+", required=True, help="SVD cache of each task")
    parser.add_argument("--finetuned", nargs="*", default=[], help="fine-tuned encoder of each task (WEMoE only)")
    add_attention_arg(parser)
    parser.add_argument("--alpha", type=float, required=True, help="scaling of MASS's merges (merge.alpha)")
    parser.add_argument("--mass-result", required=True, help="MASS (proj router) result: its routing location")
    parser.add_argument("--mass-routing", required=True, help="MASS (proj router) selections of the test images")
    parser.add_argument("--moerging", nargs="*", choices=list(MOERGING), required=True,
                        help="the MoErging methods run beside MASS (moerging.methods), measured here too")
    parser.add_argument("--gate-k", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--top-k", type=int, required=True)
    parser.add_argument("--init-lambda", type=float, required=True)
    parser.add_argument("--eval-batch-size", type=int, required=True, help="WEMoE's images per evaluated batch")
    parser.add_argument("--images", type=int, required=True, help="test images timed (cost.images)")
    parser.add_argument("--repeats", type=int, required=True, help="timing rounds, best kept (cost.repeats)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup(args)
    device, size, T = default_device(), image_size(args.model), len(args.tasks)
    pre = visual_state_dict(load_tensors(args.pretrained))
    comps = load_components(args.components, args.attention, args.tasks, args.model)
    heads, names = load_heads(args.heads, args.tasks, args.model)
    test = load_benchmark_split(args.data_dirs, args.tasks, "test")
    rows = sample_rows(test.task, T, args.images)
    images = RowSubset(test.images, rows)
    routing = load_arrays(args.mass_routing)
    if list(routing["tasks"]) != list(args.tasks) or len(routing["selection"]) != len(test.task):
        raise SystemExit(f"{args.mass_routing} was made for other tasks or test images; rerun evaluate_mass")
    selection = torch.from_numpy(routing["selection"][rows])
    hp = MethodResult.load(args.mass_result).hyperparameters
    location = Location(LayerId.parse(hp["layer"]), hp["token"])

    forward_model = create_visual(args.model, pre, device)
    mass = MassModel(create_visual(args.model, pre, device), pre, comps, heads, names, size, device, args.alpha)
    bases = layer_bases(comps, [location.layer], T)
    router = ProjectionRouter(eta=hp["eta"], top_k=hp["top_k"], temperature=hp["temperature"])
    per_task = [RowSubset(images, np.flatnonzero(test.task.numpy()[rows] == t)) for t in range(T)]

    def routing_pass() -> torch.Tensor:
        _, res = first_pass(forward_model, images, size, bases, tokens=(location.token,), batch_size=args.batch_size,
                            device=device, routing_only=True)
        return router.route_residuals(res[location])

    steps = {"forward": lambda: encode(forward_model, images, size, args.batch_size, device),
             "routing_pass": routing_pass,
             "mass_proj": lambda: (routing_pass(), mass.predict(images, selection, args.batch_size))}
    storage = {"mass_proj": mass_parameters(pre, comps)}
    if "smile" in args.moerging:
        smile = SmileModel(create_visual(args.model, pre, device), pre, comps, args.gate_k, args.k, args.top_k, device)
        steps["smile"] = lambda: smile.predict(images, size, args.batch_size)
        storage["smile"] = held_parameters(smile.visual)
    if "wemoe" in args.moerging:
        task_vectors = TaskVectorFiles(pre, args.finetuned, args.tasks, args.model)
        wemoe = from_task_vectors(args.model, pre, task_vectors, args.init_lambda, args.seed, device)
        steps["wemoe"] = lambda: [predict(wemoe, part, size, args.eval_batch_size, device) for part in per_task]
        storage["wemoe"] = held_parameters(wemoe)
    steps["mass_proj"]()  # the subset factors MASS caches across batches are built before it is timed
    macs = {name: count_macs(step) for name, step in steps.items()}
    seconds = best_times(steps, args.repeats, device)
    pre_params = held_parameters(pre)
    floor = macs["routing_pass"] + macs["forward"] + exact_merge_macs(comps, selection, tokens_per_matrix(
        forward_model, size))
    methods = {}
    for name in TABLE2_ROWS:
        if name in MOERGING and name not in args.moerging:
            continue
        if name in storage:
            methods[name] = {"storage": storage[name] / pre_params, "macs_over_forward": macs[name] / macs["forward"],
                             "time_over_forward": seconds[name] / seconds["forward"], "basis": "measured"}
        else:
            methods[name] = {"storage": float(T) if name == "finetuned" else 1.0, "macs_over_forward": 1.0,
                             "time_over_forward": 1.0, "basis": "the plain forward's network"}
    methods["mass_proj"]["floor_macs_over_forward"] = floor / macs["forward"]
    result = {"images": len(rows), "repeats": args.repeats, "device": str(device), "threads": args.threads,
              "forward_s": seconds["forward"], "forward_macs": macs["forward"],
              "routing_pass_over_forward": seconds["routing_pass"] / seconds["forward"],
              "mean_selected_tasks": float(selection.sum(1).float().mean()), "methods": methods}
    write_json(args.out, result)
    log_images_forwarded()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
