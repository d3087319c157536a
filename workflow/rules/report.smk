# Tables and figures: every number comes from results/tables/per_task.csv.


rule collect_results:
    input:
        results=[m for bb in BACKBONES for b in BENCHMARKS for m in method_results(bb, b)],
        endpoints=[f"results/{bb}/tasks/{t}/endpoints.json" for bb in BACKBONES for t in all_tasks()],
    output:
        per_task=report("results/tables/per_task.csv", caption="../report/per_task.rst", category="Tables"),
        hparams="results/tables/selected_hyperparameters.json",
    params:
        results=" ".join(f"{bb}:{b}:{m}" for bb in BACKBONES for b in BENCHMARKS for m in method_results(bb, b)),
        endpoints=" ".join(f"{bb}:results/{bb}/tasks/{t}/endpoints.json" for bb in BACKBONES for t in all_tasks()),
    log:
        "results/logs/collect_results.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass.collect_results --results {params.results} --endpoints {params.endpoints} "
        "--out {output.per_task} --hparams-out {output.hparams} > {log} 2>&1"


rule make_tables:
    input:
        "results/tables/per_task.csv",
    output:
        table2=report("results/tables/table2.tex", caption="../report/table2.rst", category="Tables"),
        vs_paper=report("results/tables/table2_vs_paper.tex", caption="../report/table2_vs_paper.rst",
                        category="Tables"),
        table3=report("results/tables/table3.tex", caption="../report/table3.rst", category="Tables"),
    log:
        "results/logs/make_tables.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass.make_tables --per-task {input} --out-dir results/tables > {log} 2>&1"


rule make_plots:
    input:
        per_task="results/tables/per_task.csv",
        sweeps=[f"results/{bb}/{b}/sweep/selected_test.csv" for bb in BACKBONES for b in BENCHMARKS],
    output:
        radar=report(expand("figures/radar_{bench}.{ext}", bench=BENCHMARKS, ext=["pdf", "png"]),
                     caption="../report/radar.rst", category="Figures"),
        per_layer=report(expand("figures/per_layer_{backbone}_{bench}.{ext}", backbone=BACKBONES,
                                bench=BENCHMARKS, ext=["pdf", "png"]),
                         caption="../report/per_layer.rst", category="Figures"),
        batched=report(multiext("figures/batched", ".pdf", ".png"), caption="../report/batched.rst",
                       category="Figures"),
    params:
        sweeps=" ".join(f"{bb}:{b}:results/{bb}/{b}/sweep/selected_test.csv" for bb in BACKBONES for b in BENCHMARKS),
        dpi=config["plots"]["dpi"],
        style=config["plots"]["style"],
    log:
        "results/logs/make_plots.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/mass.yaml"
    shell:
        "python -m mass.make_plots --per-task {input.per_task} --sweeps {params.sweeps} --out-dir figures "
        "--dpi {params.dpi} --style {params.style} > {log} 2>&1"
