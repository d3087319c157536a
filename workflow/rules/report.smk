# Tables and figures: every number comes from results/tables/per_task.csv.


rule collect_results:
    input:
        results=[m for bb in BACKBONES for b in BENCHMARKS for m in method_results(bb, b)],
        endpoints=[f"results/{bb}/tasks/{t}/endpoints.json" for bb in BACKBONES for t in all_tasks()],
        epsilons=[f"results/{bb}/{b}/selected_epsilon.json" for bb in BACKBONES for b in BENCHMARKS],
    output:
        per_task=report("results/tables/per_task.csv", caption="../report/per_task.rst", category="Data"),
        hparams=report("results/tables/selected_hyperparameters.json", caption="../report/hyperparameters.rst",
                       category="Data"),
    params:
        results=" ".join(f"{bb}:{b}:{m}" for bb in BACKBONES for b in BENCHMARKS for m in method_results(bb, b)),
        endpoints=" ".join(f"{bb}:results/{bb}/tasks/{t}/endpoints.json" for bb in BACKBONES for t in all_tasks()),
        epsilons=" ".join(f"{bb}:{b}:results/{bb}/{b}/selected_epsilon.json" for bb in BACKBONES for b in BENCHMARKS),
    log:
        "results/logs/collect_results.log",
    benchmark:
        "results/benchmarks/collect_results.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.collect_results --results {params.results} --endpoints {params.endpoints} "
        "--epsilons {params.epsilons} --out {output.per_task} --hparams-out {output.hparams} > {log} 2>&1"


rule make_tables:
    input:
        per_task="results/tables/per_task.csv",
        provenance=[f"results/{bb}/provenance.csv" for bb in BACKBONES],
        task_info=[f"{data_root()}/{t}/info.json" for t in all_tasks()],
    output:
        table2=report(multiext("results/tables/table2", ".tex", ".csv"), caption="../report/table2.rst",
                      category="Tables"),
        vs_paper=report(multiext("results/tables/table2_vs_paper", ".tex", ".csv"),
                        caption="../report/table2_vs_paper.rst", category="Tables"),
        table3=report(multiext("results/tables/table3", ".tex", ".csv"), caption="../report/table3.rst",
                      category="Tables"),
        table4=report(multiext("results/tables/table4", ".tex", ".csv"), caption="../report/table4.rst",
                      category="Tables"),
        tsvc=report(multiext("results/tables/tsvc", ".tex", ".csv"), caption="../report/tsvc.rst", category="Tables"),
        routing=report(multiext("results/tables/routing_accuracy", ".tex", ".csv"),
                       caption="../report/routing_accuracy.rst", category="Tables"),
        provenance=report(multiext("results/tables/endpoints_vs_published", ".tex", ".csv"),
                          caption="../report/endpoints_vs_published.rst", category="Tables"),
    params:
        edition=config["edition"],
        wemoe_adapt_on=config["moerging"]["wemoe"]["adapt_on"],
    log:
        "results/logs/make_tables.log",
    benchmark:
        "results/benchmarks/make_tables.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.make_tables --per-task {input.per_task} --edition {params.edition} "
        "--wemoe-adapt-on {params.wemoe_adapt_on} "
        "--provenance {input.provenance} --task-info {input.task_info} --out-dir results/tables > {log} 2>&1"


rule make_plots:
    input:
        per_task="results/tables/per_task.csv",
        hparams="results/tables/selected_hyperparameters.json",
        sweeps=[f"results/{bb}/{b}/sweep/selected_test.csv" for bb in BACKBONES for b in BENCHMARKS],
        routing=[f"results/{bb}/{b}/methods/mass_proj_routing.npz" for bb in BACKBONES for b in BENCHMARKS],
        textspan=[f"results/{bb}/{b}/textspan{ext}" for bb in BACKBONES for b in BENCHMARKS
                  for ext in (".csv", "_images.npz")],
    output:
        radar=report(expand("figures/radar_{bench}.{ext}", bench=BENCHMARKS, ext=["pdf", "png"]),
                     caption="../report/radar.rst", category="Figures", subcategory="Radar charts"),
        per_layer=report(expand("figures/per_layer_{backbone}_{bench}.{ext}", backbone=BACKBONES,
                                bench=BENCHMARKS, ext=["pdf", "png"]),
                         caption="../report/per_layer.rst", category="Figures", subcategory="Per-layer routing"),
        batched=report(multiext("figures/batched", ".pdf", ".png"), caption="../report/batched.rst",
                       category="Figures", subcategory="Batched routing"),
        confusion=report(expand("figures/confusion_{backbone}_{bench}.{ext}", backbone=BACKBONES, bench=BENCHMARKS,
                                ext=["pdf", "png"]),
                         caption="../report/confusion.rst", category="Figures", subcategory="Routing confusion"),
        selection_sizes=report(expand("figures/selection_sizes_{backbone}_{bench}.{ext}", backbone=BACKBONES,
                                      bench=BENCHMARKS, ext=["pdf", "png"]),
                               caption="../report/selection_sizes.rst", category="Figures",
                               subcategory="Selection sizes"),
        textspan=report(expand("figures/textspan_{backbone}_{bench}.{ext}", backbone=BACKBONES, bench=BENCHMARKS,
                               ext=["pdf", "png"]),
                        caption="../report/textspan.rst", category="Figures", subcategory="TEXTSPAN decoding"),
        data=expand("figures/{name}.csv", name=[f"radar_{b}" for b in BENCHMARKS] + ["batched"]
                    + [f"{kind}_{bb}_{b}" for kind in ("per_layer", "confusion", "selection_sizes", "textspan")
                       for bb in BACKBONES for b in BENCHMARKS]),
    params:
        sweeps=" ".join(f"{bb}:{b}:results/{bb}/{b}/sweep/selected_test.csv" for bb in BACKBONES for b in BENCHMARKS),
        routing=" ".join(f"{bb}:{b}:results/{bb}/{b}/methods/mass_proj_routing.npz" for bb in BACKBONES
                         for b in BENCHMARKS),
        textspan=" ".join(f"{bb}:{b}:results/{bb}/{b}/textspan.csv:results/{bb}/{b}/textspan_images.npz"
                          for bb in BACKBONES for b in BENCHMARKS),
        top_k=config["routing"]["top_k"],
        io=config["routing"]["io"],
        token=config["routing"]["token"],
        dpi=config["plots"]["dpi"],
        style=config["plots"]["style"],
    log:
        "results/logs/make_plots.log",
    benchmark:
        "results/benchmarks/make_plots.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.make_plots --per-task {input.per_task} --hparams {input.hparams} --sweeps {params.sweeps} "
        "--routing {params.routing} --textspan {params.textspan} --top-k {params.top_k} --io {params.io} --token {params.token} --out-dir figures "
        "--dpi {params.dpi} --style {params.style} "
        "> {log} 2>&1"


rule accuracy_vs_cost:
    input:
        per_task="results/tables/per_task.csv",
        costs=[f"results/{bb}/{b}/cost.json" for bb in BACKBONES for b in BENCHMARKS],
    output:
        table=report(multiext("results/tables/accuracy_vs_cost", ".tex", ".csv"),
                     caption="../report/accuracy_vs_cost.rst", category="Tables"),
        figure=report(multiext("figures/accuracy_vs_cost", ".pdf", ".png"), caption="../report/accuracy_vs_cost.rst",
                      category="Figures", subcategory="Accuracy against cost"),
        data="figures/accuracy_vs_cost.csv",
    params:
        costs=" ".join(f"{bb}:{b}:results/{bb}/{b}/cost.json" for bb in BACKBONES for b in BENCHMARKS),
        dpi=config["plots"]["dpi"],
    log:
        "results/logs/accuracy_vs_cost.log",
    benchmark:
        "results/benchmarks/accuracy_vs_cost.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass_pipeline.steps.accuracy_vs_cost --per-task {input.per_task} --costs {params.costs} "
        "--table results/tables/accuracy_vs_cost.tex --figure figures/accuracy_vs_cost --dpi {params.dpi} > {log} 2>&1"
