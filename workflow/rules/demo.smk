# Offline demo sources: generated tasks and a CLIP pretrained here (no download).


rule generate_demo_task:
    output:
        splits=multiext("resources/data/demo/{task}/", "train_images.npy", "train_labels.npy", "val_images.npy",
                        "val_labels.npy", "test_images.npy", "test_labels.npy"),
        info="resources/data/demo/{task}/info.json",
    wildcard_constraints:
        task=except_own("[A-Za-z0-9_]+"),
    params:
        n_train=config["demo"]["n_train"],
        n_test=config["demo"]["n_test"],
        seed=config["seed"],
    log:
        "results/logs/generate_demo_task/{task}.log",
    benchmark:
        "results/benchmarks/generate_demo_task/{task}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.generate_demo_task --task {wildcards.task} --out resources/data/demo --n-train {params.n_train} "
        "--n-test {params.n_test} --seed {params.seed} > {log} 2>&1"


rule pretrain_demo_clip:
    output:
        "resources/checkpoints/{backbone}/pretrained_demo.safetensors",
    params:
        arch=arch,
        per_task=config["demo"]["pretrain"]["per_task"],
        domain_per_task=config["demo"]["pretrain"]["domain_per_task"],
        steps=config["demo"]["pretrain"]["steps"],
        batch_size=config["demo"]["pretrain"]["batch_size"],
        lr=config["demo"]["pretrain"]["lr"],
        seed=config["seed"],
    log:
        "results/logs/pretrain_demo_clip/{backbone}.log",
    benchmark:
        "results/benchmarks/pretrain_demo_clip/{backbone}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.pretrain_demo_clip --model {params.arch} --out {output} --per-task {params.per_task} "
        "--domain-per-task {params.domain_per_task} --steps {params.steps} --batch-size {params.batch_size} --lr {params.lr} --seed {params.seed} "
        "--threads {threads} > {log} 2>&1"
