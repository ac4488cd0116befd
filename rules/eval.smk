rule eval_rm:
    input:
        model=eval_model_input,
        data=benchmark_input,
        template=chat_template_file("eval"),
    output:
        result="results/eval/{model_id}/{benchmark}.json",
    log:
        "logs/eval_rm/{model_id}/{benchmark}.log",
    benchmark:
        "results/benchmarks/eval_rm/{model_id}/{benchmark}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: job_threads("eval_rm")
    resources:
        **job_resources("eval_rm"),
    params:
        hp=cli_args("eval", exclude=("benchmarks",)),
        spec=benchmark_arg,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.eval_rm {params.hp}"
        " --model {input.model} --model-id {wildcards.model_id}"
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
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.eval_rewardbench {params.hp}"
        " --xstest-weights {params.xstest}"
        " --model {input.model} --model-id {wildcards.model_id}"
        " --out {output.result} > {log} 2>&1"
