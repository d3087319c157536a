# Fixed merge (Algorithm 1), first pass, per-layer routing sweeps and the choice of epsilon.


# MASS's merges eps<E> (epsilon-filtered, or epsnone) lay out attention as merge.attention says; where
# that is "qkv", static TSV-M (evaluate_tsvm) gets its own merge "static", with in_proj whole.
rule merge:
    input:
        components=lambda w: bench_inputs(w)["components"],
    output:
        merged="results/{backbone}/{bench}/merge/{merge}.safetensors",
        accepted="results/{backbone}/{bench}/merge/{merge}.json",
    params:
        arch=arch,
        tasks=lambda w: " ".join(tasks(w)),
        epsilon=lambda w: w.merge.removeprefix("eps") if w.merge != "static" else "none",
        attention=lambda w: "in_proj" if w.merge == "static" else config["merge"]["attention"],
    log:
        "results/logs/merge/{backbone}/{bench}/{merge}.log",
    benchmark:
        "results/benchmarks/merge/{backbone}/{bench}/{merge}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=30,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.merge --model {params.arch} --tasks {params.tasks} --components {input.components} --epsilon {params.epsilon} "
        "--attention {params.attention} --out {output.merged} --accepted {output.accepted} --threads {threads} > {log} 2>&1"


rule first_pass:
    input:
        unpack(first_pass_inputs),
    output:
        "results/{backbone}/{bench}/first_pass/{fpmodel}_{split}.npz",
    params:
        common=bench_args,
        model=first_pass_model_args,
        ios=" ".join(config["first_pass"]["ios"]),
        tokens=" ".join(config["first_pass"]["tokens"]),
        alpha=config["merge"]["alpha"],
    log:
        "results/logs/first_pass/{backbone}/{bench}/{fpmodel}_{split}.log",
    benchmark:
        "results/benchmarks/first_pass/{backbone}/{bench}/{fpmodel}_{split}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.first_pass {params.common} --components {input.components} {params.model} --split {wildcards.split} "
        "--ios {params.ios} --tokens {params.tokens} --alpha {params.alpha} --threads {threads} "
        "--out {output} > {log} 2>&1"


rule routing_sweep:
    input:
        "results/{backbone}/{bench}/first_pass/{fpmodel}_{split}.npz",
    output:
        "results/{backbone}/{bench}/sweep/{fpmodel}_{split}.csv",
    params:
        tasks=lambda w: " ".join(tasks(w)),
    log:
        "results/logs/routing_sweep/{backbone}/{bench}/{fpmodel}_{split}.log",
    benchmark:
        "results/benchmarks/routing_sweep/{backbone}/{bench}/{fpmodel}_{split}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.routing_sweep --first-pass {input} --tasks {params.tasks} --out {output} > {log} 2>&1"


rule select_epsilon:
    input:
        sweeps=expand("results/{{backbone}}/{{bench}}/sweep/eps{eps}_val.csv", eps=EPSILONS),
        merges=expand("results/{{backbone}}/{{bench}}/merge/eps{eps}.safetensors", eps=EPSILONS),
    output:
        "results/{backbone}/{bench}/selected_epsilon.json",
    params:
        epsilons=" ".join(EPSILONS),
        blocks=blocks,
        modules=" ".join(config["routing"]["modules"]),
        io=config["routing"]["io"],
        token=config["routing"]["token"],
    log:
        "results/logs/select_epsilon/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/select_epsilon/{backbone}/{bench}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.select_epsilon --epsilons {params.epsilons} --sweeps {input.sweeps} --merges {input.merges} "
        "--blocks {params.blocks} --modules {params.modules} --io {params.io} --token {params.token} "
        "--out {output} > {log} 2>&1"
