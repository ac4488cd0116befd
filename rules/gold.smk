rule train_gold:
    input:
        pairs=expand("results/data/{domain}/train.jsonl", domain=DOMAINS),
        base=gold_train_base_input,
    output:
        model=directory(GOLD_TRAINED),
    log:
        "logs/train_gold/train_gold.log",
    benchmark:
        "results/benchmarks/train_gold/train_gold.tsv"
    # the over-optimisation chain (gold, labels, proxies, candidates) is the
    # longest path of the tiny study: start it before DogeRM's domain LMs
    priority: 20
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_rm")
    resources:
        **job_resources("train_rm"),
    params:
        launch=launcher,
        hp=cli_args("gold/train", exclude=("seed", "base")),
        base=gold_train_base_args,
        seed=GOLD["train"]["seed"],
        ckpt="results/checkpoints/train_gold",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} -m pipelines.train_rm {params.hp}"
        " --clean-chosen true {params.base} --seed {params.seed}"
        " --pairs {input.pairs} --checkpoint-dir {params.ckpt}"
        " --out {output.model} > {log} 2>&1"


rule label_gold:
    input:
        policy="results/models/sft/general",
        gold=gold_model_input,
        pairs=expand("results/data/{domain}/train.jsonl", domain=BON_DOMAINS),
        exclude=expand("results/data/{domain}/test.jsonl", domain=BON_DOMAINS),
    output:
        pairs=gold_labelled_targets(),
    log:
        "logs/label_gold/label_gold.log",
    benchmark:
        "results/benchmarks/label_gold/label_gold.tsv"
    priority: 20
    conda:
        "../envs/train.yaml"
    threads: job_threads("generate_candidates")
    resources:
        **job_resources("generate_candidates"),
    params:
        hp=cli_args("gold/label", exclude=("seed",)),
        gold=gold_model_arg,
        verifier=gold_verifier_args,
        seed=GOLD["label"]["seed"],
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.label_gold {params.hp}"
        " {params.gold} {params.verifier} --policy {input.policy}"
        " --pairs {input.pairs} --exclude {input.exclude} --seed {params.seed}"
        " --workers {threads} --out {output.pairs} > {log} 2>&1"
