# TEXTSPAN decoding of task singular vectors (paper Sec. 4.3, Figs. 5 and 12): the description pool
# (downloaded at a pinned commit, or generated offline by the demo), then per benchmark the decoding
# at the routing location chosen on validation and at an early block.


rule download_descriptions:
    output:
        "resources/descriptions/hub.txt",
    params:
        repo=_POOL["repo"],
        commit=_POOL["commit"],
        path=_POOL["path"],
        checksum=descriptions_checksum(),
        lock=_LOCK,
    log:
        "results/logs/sources/download_descriptions.log",
    benchmark:
        "results/benchmarks/download_descriptions.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    localrule: True
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.download_descriptions --repo {params.repo} --commit {params.commit} --path {params.path} "
        "{params.checksum} --lock {params.lock} --out {output} > {log} 2>&1"


rule demo_descriptions:
    output:
        "resources/descriptions/demo.txt",
    log:
        "results/logs/demo_descriptions.log",
    benchmark:
        "results/benchmarks/demo_descriptions.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.demo_descriptions --out {output} > {log} 2>&1"


rule interpret_tsv:
    input:
        unpack(bench_inputs),
        mass_result="results/{backbone}/{bench}/methods/mass_proj.json",
        descriptions=descriptions_file(),
    output:
        picks="results/{backbone}/{bench}/textspan.csv",
        images="results/{backbone}/{bench}/textspan_images.npz",
    params:
        arch=arch,
        tasks=lambda w: " ".join(tasks(w)),
        root=data_root(),
        early_block=config["textspan"]["early_block"],
        texts_per_task=config["textspan"]["texts_per_task"],
        images_per_task=config["textspan"]["images_per_task"],
        seed=config["seed"],
    log:
        "results/logs/interpret_tsv/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/interpret_tsv/{backbone}/{bench}.tsv"
    threads: 1
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=30,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.interpret_tsv --model {params.arch} --pretrained {input.pretrained} --tasks {params.tasks} "
        "--data-dirs {params.root} --components {input.components} --mass-result {input.mass_result} "
        "--descriptions {input.descriptions} --early-block {params.early_block} "
        "--texts-per-task {params.texts_per_task} --images-per-task {params.images_per_task} --seed {params.seed} "
        "--threads {threads} --out {output.picks} --out-images {output.images} > {log} 2>&1"
