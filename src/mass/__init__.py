"""MASS: MoErging through Adaptive Subspace Selection (Crisostomi et al., ICLR 2026).

The library behind the reproduction pipeline; usable on its own checkpoints:

- :mod:`mass.task_vectors`: task vectors / task matrices of open_clip image encoders
- :mod:`mass.hf_vision`: transformers CLIP image towers (FusionBench's checkpoints) in open_clip's layout
- :mod:`mass.svd`: truncated SVDs and the per-task SVD cache (:class:`TaskComponents`)
- :mod:`mass.tsv`: TSV-M and the epsilon filter
- :mod:`mass.baselines`: weight averaging, Task Arithmetic, Consensus TA, Iso-C, Iso-CTS
- :mod:`mass.routing`: projection, nearest-neighbour and MLP routers
- :mod:`mass.forward`: the first pass (features and routing residuals) and its files
- :mod:`mass.second_pass`, :mod:`mass.mass_model`: the second pass and the MASS model
- :mod:`mass.heads`, :mod:`mass.encoder`: zero-shot heads and open_clip image towers
- :mod:`mass.smile`, :mod:`mass.wemoe`, :mod:`mass.tsvc`: the final edition's other MoErging methods, TSV-C
- :mod:`mass.data.store`: images as the pipeline stores them, and batches of them for the encoders

It needs torch, numpy, open_clip and safetensors only (``pip install .``). The Snakemake pipeline
(downloads, dataset preparation, result files, tables, one entry point per rule) is
:mod:`mass_pipeline`, installed with the ``pipeline`` extra.
"""

from importlib import import_module

# Names re-exported here, and the module that defines each. They are imported on first use
# (PEP 562), so that ``python -m mass_pipeline.steps.<rule>`` pays only for what that step needs: importing
# open_clip (for the encoders) costs ~4 s, which steps such as the routing sweep never use.
_EXPORTS = {
    "MassModel": "mass_model", "first_pass": "forward", "layer_bases": "forward", "Location": "task_vectors",
    "ProjectionRouter": "routing", "projection_residuals": "routing", "routing_weights": "routing",
    "select_tasks": "routing", "LowRank": "svd", "TaskComponents": "svd", "LayerId": "task_vectors",
    "TaskVector": "task_vectors", "visual_state_dict": "task_vectors", "apply_delta": "tsv",
    "epsilon_filter": "tsv", "tsv_merge": "tsv", "create_clip": "encoder", "create_visual": "encoder",
    "image_size": "encoder", "build_zero_shot_head": "heads", "tokenizer_for": "heads",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mass' has no attribute {name!r}")
    return getattr(import_module(f"mass.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
