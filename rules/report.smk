# Report rules: each study's table and plot, registered for `snakemake --report`
# (categories are numbered in the order a reader should go), and the summary the
# report opens on (report/workflow.rst includes results/report/summary.rst).


rule report_eval:
    input:
        evals=eval_targets(),
        official=rewardbench_official_targets("rms"),
    output:
        csv=report(
            "results/report/eval.csv",
            category="2 Evaluation",
            caption="../report/eval_csv.rst",
            labels={"result": "table: accuracy by subset"},
        ),
        png=report(
            "results/report/eval.png",
            category="2 Evaluation",
            caption="../report/eval_png.rst",
            labels={"result": "plot: accuracy by benchmark"},
        ),
    log:
        "logs/report_eval/report_eval.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m pipelines.report_eval --evals {input.evals} {input.official}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"


rule report_bon:
    input:
        results=bon_results(),
    output:
        csv=report(
            "results/report/bon.csv",
            category="3 Best-of-n",
            caption="../report/bon_csv.rst",
            labels={"result": "table: curves per objective"},
        ),
        png=report(
            "results/report/bon.png",
            category="3 Best-of-n",
            caption="../report/bon_png.rst",
            labels={"result": "plot: gold and proxy vs KL"},
        ),
    log:
        "logs/report_bon/report_bon.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        gold=gold_name(),
    shell:
        "python -m pipelines.report_bon --results {input.results}"
        " --gold {params.gold:q}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"


rule report_dogerm:
    input:
        evals=dogerm_evals(),
        scores=dogerm_scores(),
        gens=dogerm_bon_gens(),
    output:
        csv=report(
            "results/report/dogerm.csv",
            category="4 DogeRM",
            caption="../report/dogerm_csv.rst",
            labels={"result": "table: scores per weight"},
        ),
        png=report(
            "results/report/dogerm.png",
            category="4 DogeRM",
            caption="../report/dogerm_png.rst",
            labels={"result": "plot: scores vs weight"},
        ),
    log:
        "logs/report_dogerm/report_dogerm.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        ns=json.dumps(config["merge"]["bon_ns"]),
        gold=gold_name(),
    shell:
        "python -m pipelines.report_dogerm --evals {input.evals}"
        " --scores {input.scores} --gens {input.gens} --ns '{params.ns}'"
        " --gold {params.gold:q}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"


rule report_ppo:
    input:
        evals=ppo_evals(),
    output:
        csv=report(
            "results/report/ppo.csv",
            category="5 PPO",
            caption="../report/ppo_csv.rst",
            labels={"result": "table: curves per objective and seed"},
        ),
        table=report(
            "results/report/ppo_summary.csv",
            category="5 PPO",
            caption="../report/ppo_summary_csv.rst",
            labels={"result": "table: start, peak and end per curve"},
        ),
        png=report(
            "results/report/ppo.png",
            category="5 PPO",
            caption="../report/ppo_png.rst",
            labels={"result": "plot: gold and proxy vs KL and steps"},
        ),
    log:
        "logs/report_ppo/report_ppo.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        gold=gold_name(),
    shell:
        "python -m pipelines.report_ppo --evals {input.evals}"
        " --gold {params.gold:q}"
        " --out-csv {output.csv} --out-table {output.table}"
        " --out-png {output.png} > {log} 2>&1"


rule report_summary:
    input:
        data=[*data_targets(), *summary_gold_data()],
        models=[
            *sft_targets(),
            *summary_gold_model(),
            *map(model_path, rm_model_ids() + merged_model_ids()),
        ],
        evals=[*eval_targets(), *dogerm_evals()],
        eval_csv=rules.report_eval.output.csv,
        bon_csv=rules.report_bon.output.csv,
        dogerm_csv=rules.report_dogerm.output.csv,
        ppo_table=rules.report_ppo.output.table,
    output:
        rst="results/report/summary.rst",
        csv=report(
            "results/report/headline.csv",
            category="1 Summary",
            caption="../report/headline_csv.rst",
            labels={"result": "table: headline numbers"},
        ),
        config=report(
            "results/report/config.yaml",
            category="1 Summary",
            caption="../report/config_yaml.rst",
            labels={"result": "config used (YAML)"},
        ),
    log:
        "logs/report_summary/report_summary.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        # the science only: compute sizes change no result (and rerun nothing)
        config=json.dumps(
            {k: v for k, v in config.items() if k != "compute"}, sort_keys=True
        ),
    shell:
        "python -m pipelines.report_summary --config-json {params.config:q}"
        " --data {input.data} --models {input.models} --evals {input.evals}"
        " --eval-csv {input.eval_csv} --bon-csv {input.bon_csv}"
        " --dogerm-csv {input.dogerm_csv} --ppo-table {input.ppo_table}"
        " --out-rst {output.rst}"
        " --out-csv {output.csv} --out-config {output.config} > {log} 2>&1"


rule report_armo:
    input:
        result=rules.eval_armo.output.result,
    output:
        csv=report(
            "results/report/armo.csv",
            category="6 ArmoRM",
            caption="../report/armo_csv.rst",
            labels={"result": "table: accuracy, gates, debiasing"},
        ),
        png=report(
            "results/report/armo.png",
            category="6 ArmoRM",
            caption="../report/armo_png.rst",
            labels={"result": "plot: accuracy, gates, debiasing"},
        ),
    log:
        "logs/report_armo/report_armo.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m pipelines.report_armo --eval {input.result}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
