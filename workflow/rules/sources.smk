# External inputs: hub datasets -> prepared splits, OpenAI CLIP, published fine-tuned encoders and heads.
# Every download is resumable and verified against the lock file (see src/mass/download.py).
# check_head reads each published (pickled) head with a restricted unpickler (tensors only), stores it
# as safetensors and reports its per-class agreement with the head built from text; tasks whose
# encoders come from the hub then use the published head (models.smk). With finetuned.source hub,
# theta_pre is the image tower of the same repository's zero-shot checkpoint, compared once with
# open_clip's copy (results/<backbone>/theta_pre.json).
#
# Config keys read here (example values for config.yaml):
#   sources:
#     lock_file: workflow/sources.lock.json    # pins hub revisions + size/sha256 of every download (commit it)
#     hf_endpoint: null                        # hub endpoint; null: $HF_ENDPOINT, else https://huggingface.co
#     finetuned_repo: nik-dim/tall_masks       # published single-task checkpoints (and heads): repository or owner
#     finetuned_layout: tall_masks             # where the source keeps them: tall_masks | crisostomi
#     finetuned_revision: null                 # commit sha; null: default branch, resolved once and pinned
#     emnist_orientation: torchvision          # orientation the EMNIST checkpoint expects: torchvision | mnist
#     image_size: 224                          # optional (default 224): stored resolution of prepared images
#     max_images: null                         # optional: first N val and test images per task (smoke runs)
#     finetuned_model_dirs: {}                 # optional: backbone -> folder name in finetuned_repo
#     pretrained_files: {}                     # optional: backbone -> CLIP checkpoint on disk (no download)
#     pretrained_revisions: {}                 # optional: backbone -> commit of open_clip's hub copy of OpenAI CLIP
#   datasets:                                  # optional per task; dataset facts stay in src/mass_pipeline/data/catalog.py
#     MNIST: {repo: null, revision: null}      # repo null: the catalog's; revision null: resolved once, pinned
#     EMNIST: {source_orientation: null}       # null: the catalog's (torchvision); prepare checks it


rule download_dataset:
    output:
        manifest="resources/raw/{task}/manifest.json",
    wildcard_constraints:
        task=_HUB_TASK,
    params:
        out=lambda w: f"resources/raw/{w.task}",
        lock=_LOCK,
        endpoint=_ENDPOINT,
        repo=lambda w: _opt("--repo", _dataset_cfg(w.task).get("repo")),
        revision=lambda w: _opt("--revision", _dataset_cfg(w.task).get("revision")),
    log:
        "results/logs/sources/download_dataset/{task}.log",
    benchmark:
        "results/benchmarks/download_dataset/{task}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=360,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.download_dataset --task {wildcards.task} --out {params.out} --lock {params.lock} "
        "{params.endpoint} {params.repo} {params.revision} > {log} 2>&1"


rule prepare_dataset:
    input:
        manifest="resources/raw/{task}/manifest.json",
    output:
        splits=multiext("resources/data/hub/{task}/", "val_images.npy", "val_labels.npy", "test_images.npy",
                        "test_labels.npy"),
        info="resources/data/hub/{task}/info.json",
    wildcard_constraints:
        task=_HUB_TASK,
    params:
        options=prepare_options,
    log:
        "results/logs/sources/prepare_dataset/{task}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{task}.tsv"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.prepare_dataset {params.options} --threads {threads} > {log} 2>&1"


# Only tasks fine-tuned here read their train split (all 20 take ~160 GB at 224 px), so it is
# prepared on its own, for those tasks alone.
rule prepare_train_split:
    input:
        manifest="resources/raw/{task}/manifest.json",
    output:
        multiext("resources/data/hub/{task}/", "train_images.npy", "train_labels.npy"),
    wildcard_constraints:
        task=_HUB_TASK,
    params:
        options=prepare_options,
    log:
        "results/logs/sources/prepare_train_split/{task}.log",
    benchmark:
        "results/benchmarks/prepare_train_split/{task}.tsv"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.prepare_train_split {params.options} --threads {threads} > {log} 2>&1"


rule fetch_pretrained:
    output:
        clip="resources/checkpoints/{backbone}/pretrained_openai.safetensors",
        report="results/{backbone}/theta_pre.json",
    wildcard_constraints:
        backbone="[^/]+",
    params:
        lock=_LOCK,
        endpoint=_ENDPOINT,
        from_file=lambda w: _opt("--from-file", (_SOURCES.get("pretrained_files") or {}).get(w.backbone)),
        revision=lambda w: _opt("--revision", (_SOURCES.get("pretrained_revisions") or {}).get(w.backbone)),
        zeroshot=zeroshot_options,
    log:
        "results/logs/sources/fetch_pretrained/{backbone}.log",
    benchmark:
        "results/benchmarks/fetch_pretrained/{backbone}.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.fetch_pretrained --model {wildcards.backbone} --out {output.clip} --lock {params.lock} "
        "{params.endpoint} {params.from_file} {params.revision} {params.zeroshot} --report {output.report} "
        "> {log} 2>&1"


rule fetch_finetuned:
    input:
        pretrained=projection_source,
    output:
        "resources/checkpoints/{backbone}/hub/{task}.safetensors",
    wildcard_constraints:
        task=_HUB_TASK,
        backbone="[^/]+",
    params:
        lock=_LOCK,
        endpoint=_ENDPOINT,
        repo=_SOURCES["finetuned_repo"],
        revision=_opt("--revision", _SOURCES["finetuned_revision"]),
        model_dir=lambda w: _opt("--hub-model-dir", (_SOURCES.get("finetuned_model_dirs") or {}).get(w.backbone)),
        # with theta_pre's projection where the source's encoders have none; the command and params of the other
        # sources stay as they were, so existing downloads are not redone
        layout=lambda w, input: f"{_SOURCES['finetuned_layout']} {_opt('--pretrained', input.pretrained)}".strip(),
    log:
        "results/logs/sources/fetch_finetuned/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/fetch_finetuned/{backbone}/{task}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.fetch_finetuned --model {wildcards.backbone} --task {wildcards.task} --repo {params.repo} "
        "--out {output} --lock {params.lock} {params.endpoint} {params.revision} {params.model_dir} "
        "--layout {params.layout} > {log} 2>&1"


rule check_head:
    input:
        built="resources/checkpoints/{backbone}/built_heads/{task}.safetensors",
    output:
        published="resources/checkpoints/{backbone}/published_heads/{task}.safetensors",
        report="results/{backbone}/tasks/{task}/head_check.json",
    wildcard_constraints:
        task=_HUB_TASK,
        backbone="[^/]+",
    params:
        lock=_LOCK,
        endpoint=_ENDPOINT,
        repo=_SOURCES["finetuned_repo"],
        revision=_opt("--revision", _SOURCES["finetuned_revision"]),
        model_dir=lambda w: _opt("--hub-model-dir", (_SOURCES.get("finetuned_model_dirs") or {}).get(w.backbone)),
    log:
        "results/logs/sources/check_head/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/check_head/{backbone}/{task}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.check_head --model {wildcards.backbone} --task {wildcards.task} --repo {params.repo} "
        "--out {output.published} --lock {params.lock} {params.endpoint} {params.revision} {params.model_dir} "
        "--compare-with {input.built} --report {output.report} > {log} 2>&1"


# Your own tasks (config key `tasks`, mass_pipeline.data.own_tasks): an image folder or CSV files on disk, or a hub
# dataset at a pinned commit (downloaded as the catalog's are), stored as the catalog's tasks are (val/test and
# info.json; train only for those fine-tuned here). Local rules: the files may sit where only the submitting
# machine sees them, and downloads run on the login node.
rule download_own_task:
    output:
        manifest="resources/raw/{task}/manifest.json",
    wildcard_constraints:
        task=OWN_HUB_TASK,
    params:
        dataset=own_hub_options,
        out=lambda w: own_raw(w.task),
        lock=_LOCK,
        endpoint=_ENDPOINT,
    log:
        "results/logs/sources/download_own_task/{task}.log",
    benchmark:
        "results/benchmarks/download_own_task/{task}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=360,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.download_own_task --task {wildcards.task} {params.dataset} --out {params.out} "
        "--lock {params.lock} {params.endpoint} > {log} 2>&1"


rule prepare_own_task:
    input:
        own_task_files,
    output:
        splits=multiext(f"{data_root()}/{{task}}/", "val_images.npy", "val_labels.npy", "test_images.npy",
                        "test_labels.npy"),
        info=f"{data_root()}/{{task}}/info.json",
    wildcard_constraints:
        task=OWN_TASK,
    params:
        declaration=own_task_options,
    log:
        "results/logs/prepare_own_task/{task}.log",
    benchmark:
        "results/benchmarks/prepare_own_task/{task}.tsv"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.prepare_own_task --task {wildcards.task} {params.declaration} --threads {threads} "
        "> {log} 2>&1"


rule prepare_own_train_split:
    input:
        own_task_files,
    output:
        multiext(f"{data_root()}/{{task}}/", "train_images.npy", "train_labels.npy"),
    wildcard_constraints:
        task=OWN_TASK,
    params:
        declaration=own_task_options,
    log:
        "results/logs/prepare_own_train_split/{task}.log",
    benchmark:
        "results/benchmarks/prepare_own_train_split/{task}.tsv"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.prepare_own_train_split --task {wildcards.task} {params.declaration} "
        "--threads {threads} > {log} 2>&1"
