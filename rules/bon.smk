rule generate_candidates:
    input:
        policy="results/models/sft/general",
        pairs="results/data/{domain}/test.jsonl",
        gold=gold_model_input,
        template=chat_template_file("bon/generate"),
    output:
        gens="results/bon/gens/{domain}.jsonl",
    log:
        "logs/generate_candidates/{domain}.log",
    benchmark:
        "results/benchmarks/generate_candidates/{domain}.tsv"
    priority: 10
    conda:
        "../envs/train.yaml"
    threads: job_threads("generate_candidates")
    resources:
        **job_resources("generate_candidates"),
    params:
        hp=cli_args("bon/generate"),
        seed=config["bon"]["seed"],
        verifier=verifier_args,
        gold=gold_model_arg,
    shell:
        "OMP_NUM_THREADS=1 python -m pipelines.generate_candidates {params.hp}"
        " {params.verifier} {params.gold}"
        " --policy {input.policy} --pairs {input.pairs} --domain {wildcards.domain}"
        " --seed {params.seed} --workers {threads} --out {output.gens} > {log} 2>&1"


rule bon_single:
    input:
        gens=bon_gens(),
        scores=bon_member_scores_of_seed,
    output:
        result="results/bon/seed{seed}.json",
    log:
        "logs/bon_single/seed{seed}.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        hp=bon_estimate_args,
        members=bon_member_ids_of_seed,
    shell:
        "python -m pipelines.bon_estimate {params.hp} --gens {input.gens}"
        " --scores {input.scores} --member-ids {params.members}"
        " --out {output.result} > {log} 2>&1"


rule bon_ensemble:
    input:
        gens=bon_gens(),
        scores=bon_member_scores(),
    output:
        result="results/bon/ensemble_{agg}.json",
    log:
        "logs/bon_ensemble/{agg}.log",
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        hp=bon_estimate_args,
        members=bon_member_ids(),
    shell:
        "python -m pipelines.bon_estimate {params.hp} --gens {input.gens}"
        " --scores {input.scores} --member-ids {params.members}"
        " --out {output.result} > {log} 2>&1"
