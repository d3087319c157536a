# Table 2 / Table 3 / Fig. 6 evaluations on test splits, every selection made on validation.


rule evaluate_tsvm:
    input:
        first_pass=f"results/{{backbone}}/{{bench}}/first_pass/{STATIC_TSVM}_test.npz",
        heads=lambda w: bench_inputs(w)["heads"],
    output:
        "results/{backbone}/{bench}/methods/tsvm.json",
    params:
        arch=arch,
        tasks=lambda w: " ".join(tasks(w)),
        alpha=config["merge"]["alpha"],
    log:
        "results/logs/evaluate_tsvm/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/evaluate_tsvm/{backbone}/{bench}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_tsvm --model {params.arch} --tasks {params.tasks} --heads {input.heads} --first-pass {input.first_pass} "
        "--alpha {params.alpha} --out {output} > {log} 2>&1"


rule evaluate_tsvc:
    input:
        unpack(bench_inputs),
    output:
        benchmark_k="results/{backbone}/{bench}/methods/tsvc.json",
        size="results/{backbone}/{bench}/methods/tsvc_size.json",
    params:
        common=bench_args,
        size_fraction=config["tsvc"]["size_fraction"],
        alpha=config["merge"]["alpha"],
    log:
        "results/logs/evaluate_tsvc/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/evaluate_tsvc/{backbone}/{bench}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_tsvc {params.common} --components {input.components} --alpha {params.alpha} "
        "--size-fraction {params.size_fraction} --threads {threads} --out {output.benchmark_k} "
        "--out-size {output.size} > {log} 2>&1"


rule evaluate_baseline:
    input:
        unpack(bench_inputs),
        finetuned=lambda w: [finetuned(w.backbone, t) for t in tasks(w)],
    output:
        "results/{backbone}/{bench}/methods/{method}.json",
    params:
        common=bench_args,
        options=baseline_options,
    log:
        "results/logs/evaluate_baseline/{backbone}/{bench}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate_baseline/{backbone}/{bench}/{method}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=baseline_mb,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_baseline {params.common} --method {wildcards.method} {params.options} "
        "--finetuned {input.finetuned} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_mass:
    input:
        unpack(mass_first_passes),
    output:
        result="results/{backbone}/{bench}/methods/mass_{router}.json",
        routing="results/{backbone}/{bench}/methods/mass_{router}_routing.npz",
    params:
        common=bench_args,
        routing_features=routing_features_option,
        location=routing_location_args,
        temperature=config["routing"]["temperature"],
        standardize="" if config["routing"]["standardize"] else "--no-standardize",
        top_k=config["routing"]["top_k"],
        eta=config["routing"]["eta"],
        eta_range=quoted(config["routing"]["eta_range"]),
        eta_trials=config["routing"]["eta_trials"],
        mlp_hidden=config["mlp_router"]["hidden"],
        mlp_epochs=config["mlp_router"]["epochs"],
        alpha=config["merge"]["alpha"],
        attention=config["merge"]["attention"],
    log:
        "results/logs/evaluate_mass/{backbone}/{bench}/{router}.log",
    benchmark:
        "results/benchmarks/evaluate_mass/{backbone}/{bench}/{router}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_mass {params.common} --components {input.components} --router {wildcards.router} "
        "--val-first-pass {input.val_first_pass} --test-first-pass {input.test_first_pass} {params.routing_features} "
        "{params.location} --temperature {params.temperature} {params.standardize} --top-k {params.top_k} "
        "--eta {params.eta} --eta-range {params.eta_range} --eta-trials {params.eta_trials} "
        "--mlp-hidden {params.mlp_hidden} --mlp-epochs {params.mlp_epochs} --alpha {params.alpha} --attention {params.attention} "
        "--threads {threads} --out {output.result} --routing-out {output.routing} > {log} 2>&1"


rule routing_features:
    input:
        unpack(first_pass_inputs),
        val_first_pass="results/{backbone}/{bench}/first_pass/{fpmodel}_val.npz",
    output:
        "results/{backbone}/{bench}/routing_features/{fpmodel}.npz",
    params:
        common=bench_args,
        model=first_pass_model_args,
        location=routing_location_args,
        alpha=config["merge"]["alpha"],
    log:
        "results/logs/routing_features/{backbone}/{bench}/{fpmodel}.log",
    benchmark:
        "results/benchmarks/routing_features/{backbone}/{bench}/{fpmodel}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.routing_features {params.common} {params.model} --val-first-pass {input.val_first_pass} "
        "{params.location} --alpha {params.alpha} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_batched:
    input:
        unpack(bench_inputs),
        test_first_pass="results/{backbone}/{bench}/first_pass/selected_test.npz",
        mass_result="results/{backbone}/{bench}/methods/mass_proj.json",
    output:
        "results/{backbone}/{bench}/methods/mass_batched.json",
    params:
        common=bench_args,
        route_batch_size=config["routing"]["batched_size"],
        alpha=config["merge"]["alpha"],
        attention=config["merge"]["attention"],
    log:
        "results/logs/evaluate_batched/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/evaluate_batched/{backbone}/{bench}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_batched {params.common} --components {input.components} --test-first-pass {input.test_first_pass} "
        "--mass-result {input.mass_result} --route-batch-size {params.route_batch_size} "
        "--alpha {params.alpha} --attention {params.attention} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_smile:
    input:
        unpack(bench_inputs),
    output:
        "results/{backbone}/{bench}/methods/smile.json",
    params:
        common=bench_args,
        gate_k=config["moerging"]["smile"]["gate_k"],
        k=config["moerging"]["smile"]["k"],
        top_k=config["moerging"]["smile"]["top_k"],
        attention=config["merge"]["attention"],
    log:
        "results/logs/evaluate_smile/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/evaluate_smile/{backbone}/{bench}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_smile {params.common} --components {input.components} --gate-k {params.gate_k} "
        "--k {params.k} --top-k {params.top_k} --attention {params.attention} --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_wemoe:
    input:
        unpack(bench_inputs),
        finetuned=lambda w: [finetuned(w.backbone, t) for t in tasks(w)],
    output:
        "results/{backbone}/{bench}/methods/wemoe.json",
    params:
        common=bench_args,
        init_lambda=config["moerging"]["wemoe"]["init_lambda"],
        steps=config["moerging"]["wemoe"]["steps"],
        batch_size=config["moerging"]["wemoe"]["batch_size"],
        lr=config["moerging"]["wemoe"]["lr"],
        eval_batch_size=config["moerging"]["wemoe"]["eval_batch_size"],
        adapt_on=config["moerging"]["wemoe"]["adapt_on"],
    log:
        "results/logs/evaluate_wemoe/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/evaluate_wemoe/{backbone}/{bench}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=360,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.evaluate_wemoe {params.common} --finetuned {input.finetuned} --init-lambda {params.init_lambda} "
        "--steps {params.steps} --adapt-batch-size {params.batch_size} --lr {params.lr} "
        "--eval-batch-size {params.eval_batch_size} --adapt-on {params.adapt_on} --threads {threads} --out {output} > {log} 2>&1"


rule measure_cost:
    input:
        unpack(bench_inputs),
        finetuned=lambda w: [finetuned(w.backbone, t) for t in tasks(w)] if "wemoe" in MOERGING else [],
        mass_result="results/{backbone}/{bench}/methods/mass_proj.json",
        mass_routing="results/{backbone}/{bench}/methods/mass_proj_routing.npz",
    output:
        "results/{backbone}/{bench}/cost.json",
    params:
        common=bench_args,
        finetuned=lambda w, input: f"--finetuned {' '.join(input.finetuned)}" if input.finetuned else "",
        moerging=" ".join(MOERGING),
        attention=config["merge"]["attention"],
        alpha=config["merge"]["alpha"],
        gate_k=config["moerging"]["smile"]["gate_k"],
        k=config["moerging"]["smile"]["k"],
        top_k=config["moerging"]["smile"]["top_k"],
        init_lambda=config["moerging"]["wemoe"]["init_lambda"],
        eval_batch_size=config["moerging"]["wemoe"]["eval_batch_size"],
        images=config["cost"]["images"],
        repeats=config["cost"]["repeats"],
    log:
        "results/logs/measure_cost/{backbone}/{bench}.log",
    benchmark:
        "results/benchmarks/measure_cost/{backbone}/{bench}.tsv"
    threads: config["compute_threads"]
    resources:
        mem_mb=holds_its_inputs_mb,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.measure_cost {params.common} --components {input.components} {params.finetuned} "
        "--moerging {params.moerging} --attention {params.attention} --alpha {params.alpha} "
        "--mass-result {input.mass_result} --mass-routing {input.mass_routing} --gate-k {params.gate_k} --k {params.k} "
        "--top-k {params.top_k} --init-lambda {params.init_lambda} --eval-batch-size {params.eval_batch_size} "
        "--images {params.images} --repeats {params.repeats} --threads {threads} --out {output} > {log} 2>&1"
