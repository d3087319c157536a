# MASS reproduction pipeline: `snakemake --cores all` regenerates the paper's tables and figures;
# `snakemake --cores 2 --configfile workflow/presets/demo.yaml` runs the offline demo.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sources.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
