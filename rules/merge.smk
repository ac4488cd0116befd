rule merge_dogerm:
    input:
        rm=merge_rm_input,
        lm=merge_lm_input,
    output:
        model=directory("results/models/merged/{rm}__{lm}/w{weight}"),
    log:
        "logs/merge_dogerm/{rm}__{lm}/w{weight}.log",
    benchmark:
        "results/benchmarks/merge_dogerm/{rm}__{lm}/w{weight}.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("merge_dogerm")
    resources:
        **job_resources("merge_dogerm"),
    params:
        sources=merge_sources_arg,
        weights=merge_weight_args,
    shell:
        "python -m pipelines.merge_dogerm merge {params.sources}"
        " {params.weights} --out {output.model} > {log} 2>&1"
