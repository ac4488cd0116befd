rule build_prefs:
    input:
        sources=pref_source_files,
    output:
        pairs=expand("results/data/{{domain}}/{split}.jsonl", split=SPLITS),
        sft="results/data/sft/{domain}/train.jsonl",
    log:
        "logs/build_prefs/{domain}.log",
    benchmark:
        "results/benchmarks/build_prefs/{domain}.tsv"
    conda:
        "../envs/data.yaml"
    threads: job_threads("build_prefs")
    resources:
        **job_resources("build_prefs"),
    params:
        hp=cli_args("data", exclude=("domains", "sources", "math_extraction")),
        source=pref_source_arg,
        verifier=verifier_args,
    shell:
        "python -m pipelines.build_prefs --domain {wildcards.domain} {params.hp}"
        " {params.source} {params.verifier} --workers {threads}"
        " --pairs-out {output.pairs} --sft-out {output.sft} > {log} 2>&1"
