"""MASS: MoErging through Adaptive Subspace Selection (Crisostomi et al., ICLR 2026).

The library behind the reproduction pipeline; usable on its own checkpoints:

- :mod:`mass.task_vectors`: task vectors / task matrices of open_clip image encoders
- :mod:`mass.svd`: truncated SVDs and the per-task SVD cache (:class:`TaskComponents`)
- :mod:`mass.tsv`: TSV-M and the epsilon filter
- :mod:`mass.baselines`: weight averaging, Task Arithmetic, Consensus TA, Iso-C, Iso-CTS
- :mod:`mass.routing`: projection, nearest-neighbour and MLP routers
- :mod:`mass.inference`: first pass with routing residuals, grouped MASS second pass
- :mod:`mass.metrics`: absolute, normalised and task-identification accuracy
"""

from mass.inference import MassModel, first_pass, layer_bases
from mass.routing import ProjectionRouter, projection_residuals, routing_weights, select_tasks
from mass.svd import LowRank, TaskComponents
from mass.task_vectors import LayerId, TaskVector, visual_state_dict
from mass.tsv import apply_delta, epsilon_filter, tsv_merge

__all__ = [
    "LayerId", "LowRank", "MassModel", "ProjectionRouter", "TaskComponents", "TaskVector",
    "apply_delta", "epsilon_filter", "first_pass", "layer_bases", "projection_residuals",
    "routing_weights", "select_tasks", "tsv_merge", "visual_state_dict",
]
