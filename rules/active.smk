rule select_active:
    input:
        pool=active_pool_input,
        model=active_select_model_input,
    output:
        selected="results/active/{domain}/{strategy}/seed{seed}/iter{iteration}/selected.jsonl",
        rest="results/active/{domain}/{strategy}/seed{seed}/iter{iteration}/rest.jsonl",
        report="results/active/{domain}/{strategy}/seed{seed}/iter{iteration}/selection.json",
    log:
        "logs/select_active/{domain}/{strategy}/seed{seed}/iter{iteration}.log",
    benchmark:
        "results/benchmarks/select_active/{domain}/{strategy}/seed{seed}/iter{iteration}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: job_threads("select_active")
    resources:
        **job_resources("select_active"),
    params:
        hp=cli_args(
            "active",
            exclude=(
                "domains",
                "start",
                "strategies",
                "seeds",
                "iterations",
                "mode",
                "train",
            ),
        ),
        score=cli_args(
            "eval",
            exclude=(
                "benchmarks",
                "ties",
                "xstest_weights",
                "chat_template",
                "system_prompt",
            ),
        ),
        model=active_select_model_arg,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.select_active {params.hp}"
        " {params.score} --strategy {wildcards.strategy} --seed {wildcards.seed}"
        " --iteration {wildcards.iteration} --pool {input.pool} {params.model}"
        " --out-selected {output.selected} --out-rest {output.rest}"
        " --out-report {output.report} > {log} 2>&1"


rule train_active:
    input:
        pairs=active_train_pairs,
        base=active_train_base_input,
    output:
        model=directory(
            "results/active/{domain}/{strategy}/seed{seed}/iter{iteration}/model"
        ),
    log:
        "logs/train_active/{domain}/{strategy}/seed{seed}/iter{iteration}.log",
    benchmark:
        "results/benchmarks/train_active/{domain}/{strategy}/seed{seed}/iter{iteration}.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_transfer")
    resources:
        **job_resources("train_transfer"),
    params:
        launch=launcher,
        hp=lora_train_args("active/train"),
        base=active_train_base_arg,
        ckpt="results/checkpoints/train_active/{domain}/{strategy}/seed{seed}/iter{iteration}",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} -m pipelines.train_rm {params.hp}"
        " {params.base} --seed {wildcards.seed} --pairs {input.pairs}"
        " --checkpoint-dir {params.ckpt} --out {output.model} > {log} 2>&1"


rule report_active:
    input:
        evals=active_evals(),
    output:
        csv=report(
            "results/report/active.csv",
            category="7 Transfer and active learning",
            caption="../report/active_csv.rst",
            labels={"result": "table: active learning vs random"},
        ),
        png=report(
            "results/report/active.png",
            category="7 Transfer and active learning",
            caption="../report/active_png.rst",
            labels={"result": "plot: active learning vs random"},
        ),
    log:
        "logs/report_active/report_active.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        runs=active_report_args,
    shell:
        "python -m pipelines.report_active {params.runs}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
