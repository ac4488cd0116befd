rule train_rm:
    input:
        pairs=rm_train_pairs,
        base=rm_base_input,
        template=chat_template_file("rm"),
    output:
        model=directory("results/models/rm/{trainset}/seed{seed}"),
    log:
        "logs/train_rm/{trainset}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_rm/{trainset}/seed{seed}.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_rm")
    resources:
        **job_resources("train_rm"),
    params:
        launch=launcher,
        hp=cli_args("rm", exclude=("seeds", "trainsets", "mixtures")),
        base=rm_base_arg,
        ckpt="results/checkpoints/train_rm/{trainset}/seed{seed}",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} -m pipelines.train_rm {params.hp}"
        " {params.base} --seed {wildcards.seed} --pairs {input.pairs}"
        " --checkpoint-dir {params.ckpt} --out {output.model} > {log} 2>&1"
