# MASS reproduction pipeline: `snakemake --cores all` regenerates the paper's tables and figures;
# `snakemake --cores 2 --configfile workflow/presets/demo.yaml` runs the offline demo.

import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


# Before any job (and before Snakemake deletes any output it would remake): unknown keys, the
# schema, architectures, blocks and ranges, each error naming the key and the fix (docs/config.md).
sys.path.insert(0, os.path.join(workflow.basedir, "workflow", "scripts"))
from configcheck import check_config, check_configfile_flags

check_configfile_flags(sys.argv)
check_config(config, workflow.basedir)
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sources.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/interpret.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
