"""Use MASS on your own checkpoints: the README's example, run as is by the test suite.

Replace the three "your checkpoints" lines with your open_clip image-encoder state dicts
(pretrained + one fine-tuned per task, benchmark order), your (classes x d) heads and your
uint8 images (N x H x W x 3). Here they are a tiny random CLIP, perturbed copies of it and
random pixels, so the script runs anywhere in seconds.
"""

import numpy as np
import torch

from mass import (
    LayerId,
    Location,
    MassModel,
    ProjectionRouter,
    TaskComponents,
    TaskVector,
    apply_delta,
    build_zero_shot_head,
    create_clip,
    create_visual,
    first_pass,
    image_size,
    layer_bases,
    tokenizer_for,
    tsv_merge,
)

arch = "mass-tiny-vit"  # an open_clip architecture name, e.g. "ViT-B-32-quickgelu"
torch.manual_seed(0)
clip = create_clip(arch)

# --- your checkpoints (stand-ins) ------------------------------------------------------------
pre = clip.visual.state_dict()
fts = [{k: v + 0.02 * torch.randn_like(v) for k, v in pre.items()} for _ in range(4)]
heads = [build_zero_shot_head(clip, tokenizer_for(arch), names, ["a photo of a {c}."])
         for names in (["cat", "dog"], ["car", "bus", "bike"], ["red", "green"], ["one", "two", "three"])]
images = np.random.default_rng(0).integers(0, 256, size=(32, 32, 32, 3), dtype=np.uint8)
# -----------------------------------------------------------------------------------------------

T = len(fts)
# What MASS stores per task: k = floor(r / T) singular triplets of every task matrix.
comps = [TaskComponents.from_task_vector(TaskVector.from_state_dicts(pre, ft), 1 / T) for ft in fts]

# First pass through the fixed, epsilon-filtered TSV-M model, recording routing residuals;
# routing_only stops it at the routing layer (drop it to also get the TSV-M features).
delta, _ = tsv_merge(comps, epsilon=0.3)
visual = create_visual(arch, apply_delta(pre, delta))
layer = LayerId(block=3, module="mlp", io="in")  # ViT-B-32 in the paper: LayerId(9, "mlp", "in")
_, residuals = first_pass(visual, images, image_size(arch), layer_bases(comps, [layer], T), routing_only=True)

# Route: standardised softmax over negative residuals, eta threshold, at most 3 tasks.
selection = ProjectionRouter(eta=0.2, top_k=3).route_residuals(residuals[Location(layer, "cls")])

# Second pass through theta_pre + TSV-M(selected tasks), one group per routing decision;
# the highest logit over every selected task's head picks both the task and the class.
mass = MassModel(visual, pre, comps, heads, head_names=[f"task{i}" for i in range(T)], image_size=image_size(arch))
pred = mass.predict(images, selection)
print(f"{len(images)} images, {selection.sum(1).float().mean():.1f} tasks selected on average")
print("predicted task per image: ", pred.task.tolist())
print("predicted class per image:", pred.cls.tolist())
