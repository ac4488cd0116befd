rule score_model:
    input:
        model=eval_model_input,
        data=score_model_data,
        gens=score_model_gens,
        template=score_model_templates,
    output:
        # update: the job reads the previous store and copies the scores of
        # unchanged inputs (score.reuse); Snakemake restores it on failure
        scores=update("results/scores/{model_id}.parquet"),
    log:
        "logs/score_model/{model_id}.log",
    benchmark:
        "results/benchmarks/score_model/{model_id}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: job_threads("score_model")
    resources:
        **job_resources("score_model"),
    params:
        load=cli_args("score"),
        inputs=score_model_args,
        model=eval_model_arg,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.score_model {params.load}"
        " {params.inputs} --gens {input.gens} --model {params.model}"
        " --model-id {wildcards.model_id} --out {output.scores} > {log} 2>&1"


rule eval_rm:
    input:
        scores="results/scores/{model_id}.parquet",
        data=benchmark_input,
    output:
        result="results/eval/{model_id}/{benchmark}.json",
    log:
        "logs/eval_rm/{model_id}/{benchmark}.log",
    benchmark:
        "results/benchmarks/eval_rm/{model_id}/{benchmark}.tsv"
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        hp=cli_args("eval", exclude=("benchmarks",)),
        spec=benchmark_arg,
    shell:
        "python -m pipelines.eval_rm {params.hp} --scores {input.scores}"
        " --benchmark-name {wildcards.benchmark} --benchmark {params.spec}"
        " --out {output.result} > {log} 2>&1"


rule eval_rewardbench:
    input:
        model=eval_model_input,
    output:
        result="results/eval/{model_id}/rewardbench-official.json",
    log:
        "logs/eval_rewardbench/{model_id}.log",
    benchmark:
        "results/benchmarks/eval_rewardbench/{model_id}.tsv"
    conda:
        "../envs/rewardbench.yaml"
    threads: job_threads("eval_rewardbench")
    resources:
        **job_resources("eval_rewardbench"),
    params:
        hp=cli_args("eval_rewardbench", exclude=("enabled", "models")),
        xstest=lookup(dpath="eval/xstest_weights", within=config),
        model=eval_model_arg,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.eval_rewardbench {params.hp}"
        " --xstest-weights {params.xstest}"
        " --model {params.model} --model-id {wildcards.model_id}"
        " --out {output.result} > {log} 2>&1"
