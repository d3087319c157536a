# Per-task steps: zero-shot heads, (re-)fine-tuning, endpoint accuracies, SVD cache.


rule build_head:
    input:
        clip=lambda w: pretrained(w.backbone),
        data=lambda w: head_data(w.task),
    output:
        "resources/checkpoints/{backbone}/heads/{task}.safetensors",
    params:
        arch=arch,
        root=data_root(),
    log:
        "results/logs/build_head/{backbone}/{task}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass.build_heads --model {params.arch} --pretrained {input.clip} --data {params.root} "
        "--task {wildcards.task} --out {output} --threads {threads} > {log} 2>&1"


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
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass.finetune --model {params.arch} --pretrained {input.clip} --head {input.head} "
        "--data {params.root} --task {wildcards.task} --out {output} --steps {params.steps} "
        "--batch-size {params.batch_size} --lr {params.lr} --warmup {params.warmup} "
        "--weight-decay {params.weight_decay} --seed {params.seed} --threads {threads} > {log} 2>&1"


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
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass.evaluate_endpoints --model {params.arch} --task {wildcards.task} --data-dir {params.root} "
        "--head {input.head} --pretrained {input.clip} --finetuned {input.finetuned} "
        "--batch-size {params.batch_size} --threads {threads} --out {output} > {log} 2>&1"


rule svd_cache:
    input:
        clip=lambda w: pretrained(w.backbone),
        finetuned=lambda w: finetuned(w.backbone, w.task),
    output:
        "results/{backbone}/svd/{task}.safetensors",
    params:
        rank_fraction=config["svd"]["rank_fraction"],
    log:
        "results/logs/svd_cache/{backbone}/{task}.log",
    threads: config["compute_threads"]
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass.build_svd_cache --pretrained {input.clip} --finetuned {input.finetuned} "
        "--rank-fraction {params.rank_fraction} --out {output} --threads {threads} > {log} 2>&1"
