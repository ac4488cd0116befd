rule train_transfer:
    input:
        pairs="results/data/{target}/train.jsonl",
        base=transfer_base_input,
    output:
        model=directory("results/transfer/{source}_to_{target}/n{n}/seed{seed}"),
    log:
        "logs/train_transfer/{source}_to_{target}/n{n}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_transfer/{source}_to_{target}/n{n}/seed{seed}.tsv"
    wildcard_constraints:
        source="|".join([*TRANSFER_SOURCES, SCRATCH]),
        target="|".join(TRANSFER_TARGETS),
        n=r"\d+|all",
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_transfer")
    resources:
        **job_resources("train_transfer"),
    params:
        launch=launcher,
        hp=lora_train_args("transfer/train"),
        base=transfer_base_arg,
        subset=transfer_subset_args,
        ckpt="results/checkpoints/train_transfer/{source}_to_{target}/n{n}/seed{seed}",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} -m pipelines.train_rm {params.hp}"
        " {params.base} {params.subset} --seed {wildcards.seed}"
        " --pairs {input.pairs} --checkpoint-dir {params.ckpt}"
        " --out {output.model} > {log} 2>&1"


rule report_transfer:
    input:
        evals=transfer_evals(),
    output:
        csv=report(
            "results/report/transfer.csv",
            category="7 Transfer and active learning",
            caption="../report/transfer_csv.rst",
            labels={"result": "table: transfer across domains"},
        ),
        png=report(
            "results/report/transfer.png",
            category="7 Transfer and active learning",
            caption="../report/transfer_png.rst",
            labels={"result": "plot: transfer across domains"},
        ),
    log:
        "logs/report_transfer/report_transfer.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        runs=transfer_report_args,
    shell:
        "python -m pipelines.report_transfer {params.runs}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
