"""The Snakemake pipeline's part of the MASS reproduction, installed with the ``pipeline`` extra.

What only the pipeline needs lives here, apart from the library (:mod:`mass`), as open_clip keeps
``open_clip_train`` apart from ``open_clip``: ``pip install .`` gives the algorithms with torch, numpy,
open_clip and safetensors; ``pip install ".[pipeline]"`` adds these modules' dependencies.

- :mod:`mass_pipeline.steps`: one entry point per rule (``python -m mass_pipeline.steps.<rule>``)
- :mod:`mass_pipeline.data`: the dataset catalog, preparation, your declared tasks, demo tasks, benchmark splits
- :mod:`mass_pipeline.sources`: downloads, checkpoint layouts and their conversion to open_clip's
- :mod:`mass_pipeline.results`: the evaluation steps' result files (:class:`MethodResult`, endpoints, epsilon choice)
- :mod:`mass_pipeline.methods`: the registry of baselines and routers the tables show
- :mod:`mass_pipeline.editions`, :mod:`mass_pipeline.provenance`: the paper's editions and the inputs check
- :mod:`mass_pipeline.layer_search`, :mod:`mass_pipeline.tuning`: the routing layer and eta chosen on validation
- :mod:`mass_pipeline.report`, :mod:`mass_pipeline.routing_analysis`: tables' and figures' helpers
"""
