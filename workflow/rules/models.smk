# Per-task steps: heads, (re-)fine-tuning, endpoint accuracies, SVD cache.
#
# Heads: a task whose fine-tuned encoder comes from the hub (data_source and finetuned.source
# "hub", task not re-fine-tuned here) uses the published head it was fine-tuned against
# (head_<Task>Val.pt, read tensors-only and stored as safetensors by check_head). Every other head
# (tasks fine-tuned here, heads several tasks share, the demo) is built from the CLIP text tower
# with the published code's class names and templates; build_head also builds the text head of a
# hub task, under built_heads/, for check_head's comparison. A task with an encoder of its own on any
# backbone (finetuned.files), and every task of yours (tasks), gets heads built from text on every backbone.

_OWN = {t for files in (config["finetuned"].get("files") or {}).values() for t in files} | set(OWN_TASKS)
_TASKS_WITH_PUBLISHED_HEADS = (
    sorted({t for names in config["benchmarks"].values() for t in names} - set(config["finetuned"]["refinetune"])
           - _OWN)
    if config["data_source"] == "hub" and config["finetuned"]["source"] == "hub" and publishes_heads() else []
)
_PUBLISHED = "|".join(sorted(_TASKS_WITH_PUBLISHED_HEADS))
# any name but those (a lookahead up to the word boundary before ".safetensors")
_TEXT_HEAD = rf"(?!(?:{_PUBLISHED})\b)[A-Za-z0-9_]+" if _PUBLISHED else "[A-Za-z0-9_]+"


rule build_head:
    input:
        clip=lambda w: pretrained(w.backbone),
        data=lambda w: head_data(w.task),
    output:
        "resources/checkpoints/{backbone}/heads/{task}.safetensors",
    wildcard_constraints:
        task=_TEXT_HEAD,
    params:
        arch=arch,
        root=data_root(),
    log:
        "results/logs/build_head/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/build_head/{backbone}/{task}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.build_head --model {params.arch} --pretrained {input.clip} --data {params.root} "
        "--task {wildcards.task} --out {output} --threads {threads} > {log} 2>&1"


use rule build_head as build_head_for_check with:
    output:
        "resources/checkpoints/{backbone}/built_heads/{task}.safetensors",
    wildcard_constraints:
        task="[A-Za-z0-9_]+",
    log:
        "results/logs/build_head_for_check/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/build_head_for_check/{backbone}/{task}.tsv"


rule use_published_head:
    input:
        "resources/checkpoints/{backbone}/published_heads/{task}.safetensors",
    output:
        "resources/checkpoints/{backbone}/heads/{task}.safetensors",
    wildcard_constraints:
        task=_PUBLISHED or "(?!)",
    log:
        "results/logs/use_published_head/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/use_published_head/{backbone}/{task}.tsv"
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.use_published_head --published {input} --out {output} > {log} 2>&1"


rule finetune:
    input:
        clip=lambda w: pretrained(w.backbone),
        head="resources/checkpoints/{backbone}/heads/{task}.safetensors",
        data=lambda w: train_split(w.task),
    output:
        "resources/checkpoints/{backbone}/trained/{task}.safetensors",
    params:
        arch=arch,
        root=data_root(),
        steps=config["finetune"]["steps"],
        batch_size=config["finetune"]["batch_size"],
        lr=config["finetune"]["lr"],
        warmup=config["finetune"]["warmup"],
        weight_decay=config["finetune"]["weight_decay"],
        seed=config["seed"],
    log:
        "results/logs/finetune/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/finetune/{backbone}/{task}.tsv"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.finetune --model {params.arch} --pretrained {input.clip} --head {input.head} "
        "--data {params.root} --task {wildcards.task} --out {output} --steps {params.steps} "
        "--batch-size {params.batch_size} --lr {params.lr} --warmup {params.warmup} "
        "--weight-decay {params.weight_decay} --seed {params.seed} --threads {threads} > {log} 2>&1"


rule import_finetuned:
    input:
        file=lambda w: own_file(w.backbone, w.task),
        clip=lambda w: pretrained(w.backbone),
    output:
        "resources/checkpoints/{backbone}/files/{task}.safetensors",
    params:
        arch=arch,
    log:
        "results/logs/import_finetuned/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/import_finetuned/{backbone}/{task}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    localrule: True  # the file may sit where only the submitting machine sees it
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.import_finetuned --model {params.arch} --task {wildcards.task} --file {input.file:q} "
        "--pretrained {input.clip} --out {output} > {log} 2>&1"


rule evaluate_endpoints:
    input:
        clip=lambda w: pretrained(w.backbone),
        finetuned=lambda w: finetuned(w.backbone, w.task),
        head="resources/checkpoints/{backbone}/heads/{task}.safetensors",
        data=lambda w: data_marker(w.task),
    output:
        "results/{backbone}/tasks/{task}/endpoints.json",
    params:
        arch=arch,
        root=data_root(),
        batch_size=config["first_pass"]["batch_size"],
    log:
        "results/logs/evaluate_endpoints/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/evaluate_endpoints/{backbone}/{task}.tsv"
    threads: 1
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=30,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_endpoints --model {params.arch} --task {wildcards.task} --data-dir {params.root} "
        "--head {input.head} --pretrained {input.clip} --finetuned {input.finetuned} "
        "--batch-size {params.batch_size} --threads {threads} --out {output} > {log} 2>&1"


rule check_provenance:
    input:
        endpoints=lambda w: [f"results/{w.backbone}/tasks/{t}/endpoints.json" for t in all_tasks()],
    output:
        "results/{backbone}/provenance.csv",
    params:
        edition=config["edition"],
        tolerance=config["provenance"]["tolerance"],
        accept=quoted(config["provenance"]["accept"]),
        trained_here=lambda w: quoted(trained_here(w.backbone)),
        own=lambda w: quoted(own_tasks(w.backbone)),
    log:
        "results/logs/check_provenance/{backbone}.log",
    benchmark:
        "results/benchmarks/check_provenance/{backbone}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.check_provenance --edition {params.edition} --backbone {wildcards.backbone} "
        "--endpoints {input.endpoints} --tolerance {params.tolerance} --accept {params.accept} "
        "--trained-here {params.trained_here} --own {params.own} --out {output} > {log} 2>&1"


# The SVD cache reads the provenance check (ancient: a rewritten check does not redo the cache), so no
# merge or evaluation starts on checkpoints that are not the edition's.
rule svd_cache:
    input:
        clip=lambda w: pretrained(w.backbone),
        finetuned=lambda w: finetuned(w.backbone, w.task),
        provenance=lambda w: ancient(f"results/{w.backbone}/provenance.csv"),
    output:
        "results/{backbone}/svd/{task}.safetensors",
    params:
        rank_fraction=config["svd"]["rank_fraction"],
        storage_dtype=config["svd"]["storage_dtype"],
        attention=config["merge"]["attention"],
    log:
        "results/logs/svd_cache/{backbone}/{task}.log",
    benchmark:
        "results/benchmarks/svd_cache/{backbone}/{task}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=30,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.svd_cache --pretrained {input.clip} --finetuned {input.finetuned} "
        "--rank-fraction {params.rank_fraction} --storage-dtype {params.storage_dtype} --attention {params.attention} "
        "--out {output} --threads {threads} > {log} 2>&1"
