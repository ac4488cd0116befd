# rmflow: one DAG from preference data to paper tables. Targets and outputs are
# listed in README.md; paths follow DESIGN.md.
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "workflow_config.yaml"


# The preset's values (presets/<preset>.yaml, beside this file) go over
# workflow_config.yaml; --configfile and --config are applied again on top, so
# they still win. One validation, after the layering: the schema is big enough
# that a second pass costs a noticeable share of a dry run.
PRESETS = {p.stem for p in Path(workflow.basedir, "presets").glob("*.yaml")}
PRESET = config.get("preset", "tiny")  # the schema's default; validated below
if PRESET not in PRESETS:
    raise ValueError(f"preset {PRESET!r} is not one of {sorted(PRESETS)}")


configfile: f"{workflow.basedir}/presets/{PRESET}.yaml"


validate(config, "workflow_config.schema.yaml")


# `snakemake --report report.html` opens on this page; it includes the summary
# that rule report_summary writes from the results.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/sft.smk"
include: "rules/rm.smk"
include: "rules/eval.smk"
include: "rules/gold.smk"
include: "rules/bon.smk"
include: "rules/merge.smk"
include: "rules/ppo.smk"
include: "rules/armo.smk"
include: "rules/transfer.smk"
include: "rules/active.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
        rules.report_summary.output,


rule all_data:
    input:
        data_targets(),


rule all_eval:
    input:
        report_eval_targets(),


rule all_bon:
    input:
        report_bon_targets(),


rule all_dogerm:
    input:
        report_dogerm_targets(),


rule all_ppo:
    input:
        report_ppo_targets(),


rule all_armo:
    input:
        report_armo_targets(),


rule all_transfer:
    input:
        report_transfer_targets(),


rule all_active:
    input:
        report_active_targets(),
