rule report_eval:
    input:
        evals=eval_targets(),
        official=rewardbench_official_targets("rms"),
    output:
        csv=report(
            "results/report/eval.csv",
            category="Evaluation",
            caption="../report/eval_csv.rst",
        ),
        png=report(
            "results/report/eval.png",
            category="Evaluation",
            caption="../report/eval_png.rst",
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
            category="Best-of-n",
            caption="../report/bon_csv.rst",
        ),
        png=report(
            "results/report/bon.png",
            category="Best-of-n",
            caption="../report/bon_png.rst",
        ),
    log:
        "logs/report_bon/report_bon.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m pipelines.report_bon --results {input.results}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"


rule report_dogerm:
    input:
        evals=dogerm_evals(),
        scores=dogerm_scores(),
        gens=dogerm_bon_gens(),
    output:
        csv=report(
            "results/report/dogerm.csv",
            category="DogeRM",
            caption="../report/dogerm_csv.rst",
        ),
        png=report(
            "results/report/dogerm.png",
            category="DogeRM",
            caption="../report/dogerm_png.rst",
        ),
    log:
        "logs/report_dogerm/report_dogerm.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        ns=json.dumps(config["merge"]["bon_ns"]),
    shell:
        "python -m pipelines.report_dogerm --evals {input.evals}"
        " --scores {input.scores} --gens {input.gens} --ns '{params.ns}'"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
