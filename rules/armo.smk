rule build_armo_data:
    input:
        records=armo_data_records,
    output:
        data="results/armo/data/{armo_set}/train.jsonl",
    log:
        "logs/build_armo_data/{armo_set}.log",
    benchmark:
        "results/benchmarks/build_armo_data/{armo_set}.tsv"
    wildcard_constraints:
        armo_set="multi-objective|preference|reference",
    conda:
        "../envs/data.yaml"
    threads: job_threads("build_armo_data")
    resources:
        **job_resources("build_armo_data"),
    params:
        args=armo_data_args,
    shell:
        "python -m pipelines.build_armo_data {params.args}"
        " --out {output.data} > {log} 2>&1"


rule extract_embeddings:
    input:
        data=armo_data_input,
        backbone=armo_backbone_input,
    output:
        emb="results/armo/embeddings/{armo_set}/{split}/shard{shard}-of-{n_shards}.safetensors",
    log:
        "logs/extract_embeddings/{armo_set}/{split}/shard{shard}-of-{n_shards}.log",
    benchmark:
        "results/benchmarks/extract_embeddings/{armo_set}/{split}/shard{shard}-of-{n_shards}.tsv"
    wildcard_constraints:
        shard=r"\d+",
        n_shards=r"\d+",
    conda:
        "../envs/train.yaml"
    threads: job_threads("extract_embeddings")
    resources:
        **job_resources("extract_embeddings"),
    params:
        hp=cli_args("armo/extract"),
        kind=armo_kind,
        backbone=ARMO_BACKBONE,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.extract_embeddings {params.hp}"
        " --kind {params.kind} --data {input.data} --backbone {params.backbone:q}"
        " --shard {wildcards.shard} --n-shards {wildcards.n_shards}"
        " --out {output.emb} > {log} 2>&1"


rule fit_ridge:
    input:
        emb=armo_shards("multi-objective", "train"),
    output:
        weights="results/armo/regression.safetensors",
        report="results/armo/regression.json",
    log:
        "logs/fit_ridge/fit_ridge.log",
    benchmark:
        "results/benchmarks/fit_ridge/fit_ridge.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("fit_ridge")
    resources:
        **job_resources("fit_ridge"),
    params:
        hp=cli_args("armo/ridge"),
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.fit_ridge {params.hp}"
        " --embeddings {input.emb} --out {output.weights}"
        " --report {output.report} > {log} 2>&1"


rule train_gating:
    input:
        regression=rules.fit_ridge.output.weights,
        preference=armo_shards("preference", "train"),
        reference=armo_reference_shards(),
    output:
        gating="results/armo/gating.safetensors",
        report="results/armo/gating.json",
    log:
        "logs/train_gating/train_gating.log",
    benchmark:
        "results/benchmarks/train_gating/train_gating.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_gating")
    resources:
        **job_resources("train_gating"),
    params:
        hp=cli_args("armo/gating"),
        reference=armo_reference_arg,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.train_gating {params.hp}"
        " --regression {input.regression} --preference {input.preference}"
        " {params.reference} --out {output.gating}"
        " --report {output.report} > {log} 2>&1"


rule build_armo:
    input:
        backbone=armo_backbone_input,
        regression=rules.fit_ridge.output.weights,
        gating=rules.train_gating.output.gating,
    output:
        model=directory(ARMO_MODEL),
    log:
        "logs/build_armo/build_armo.log",
    benchmark:
        "results/benchmarks/build_armo/build_armo.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("build_armo")
    resources:
        **job_resources("build_armo"),
    params:
        hp=cli_args("armo/extract", exclude=("batch_size", "max_length", "device")),
        backbone=ARMO_BACKBONE,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.build_armo {params.hp}"
        " --backbone {params.backbone:q} --regression {input.regression}"
        " --gating {input.gating} --out {output.model} > {log} 2>&1"


rule eval_armo:
    input:
        regression=rules.fit_ridge.output.weights,
        gating=rules.train_gating.output.gating,
        gating_report=rules.train_gating.output.report,
        tests=armo_test_shards().values(),
        bt=armo_bt_evals(),
        scored=expand(
            "results/eval/{model_id}/{domain}-test.json",
            model_id=[ARMO_ID],
            domain=DOMAINS,
        ),
    output:
        result="results/armo/eval.json",
    log:
        "logs/eval_armo/eval_armo.log",
    benchmark:
        "results/benchmarks/eval_armo/eval_armo.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("eval_armo")
    resources:
        **job_resources("eval_armo"),
    params:
        inputs=armo_eval_args,
        model_id=ARMO_ID,
        backbone=ARMO_BACKBONE,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipelines.eval_armo {params.inputs}"
        " --regression {input.regression} --gating {input.gating}"
        " --gating-report {input.gating_report} --model-id {params.model_id}"
        " --backbone {params.backbone:q} --out {output.result} > {log} 2>&1"
