rule train_tokenizer:
    input:
        data=tokenizer_data(),
    output:
        tokenizer=directory("results/tokenizer"),
    log:
        "logs/train_tokenizer/train_tokenizer.log",
    benchmark:
        "results/benchmarks/train_tokenizer/train_tokenizer.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_tokenizer")
    resources:
        **job_resources("train_tokenizer"),
    params:
        hp=cli_args("tokenizer"),
    shell:
        "python -m pipelines.train_tokenizer {params.hp} --data {input.data}"
        " --out {output.tokenizer} > {log} 2>&1"


rule train_sft:
    input:
        data="results/data/sft/{domain}/train.jsonl",
        base=sft_base_input,
        template=chat_template_file("sft"),
    output:
        model=directory("results/models/sft/{domain}"),
    log:
        "logs/train_sft/{domain}.log",
    benchmark:
        "results/benchmarks/train_sft/{domain}.tsv"
    # the domain LMs (the tiny study's longest jobs) feed DogeRM and the
    # transfer ground truths: start them after the over-optimisation chain
    # (priority 20) but before the many short jobs that are ready by then
    priority: 5
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_sft")
    resources:
        **job_resources("train_sft"),
    params:
        launch=launcher,
        hp=cli_args("sft"),
        base=sft_base_arg,
        seed=config["models"]["seed"],
        ckpt="results/checkpoints/train_sft/{domain}",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} -m pipelines.train_sft {params.hp}"
        " {params.base} --seed {params.seed} --data {input.data}"
        " --checkpoint-dir {params.ckpt} --out {output.model} > {log} 2>&1"
