rule train_ppo:
    input:
        policy="results/models/sft/general",
        members=ppo_member_models,
        gold=gold_model_input,
        train=expand("results/data/{domain}/train.jsonl", domain=BON_DOMAINS),
        test=expand("results/data/{domain}/test.jsonl", domain=BON_DOMAINS),
    output:
        policy=directory("results/ppo/{objective}/seed{seed}/policy"),
        evals="results/ppo/{objective}/seed{seed}/eval.jsonl",
        metrics="results/ppo/{objective}/seed{seed}/metrics.json",
    log:
        "logs/train_ppo/{objective}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_ppo/{objective}/seed{seed}.tsv"
    conda:
        "../envs/train.yaml"
    threads: job_threads("train_ppo")
    resources:
        **job_resources("train_ppo"),
    params:
        launch=launcher,
        hp=cli_args("ppo/train"),
        objective=ppo_objective,
        ids=ppo_member_ids,
        gold=gold_model_arg,
        verifier=gold_verifier_args,
        out="results/ppo/{objective}/seed{seed}",
        ckpt="results/checkpoints/train_ppo/{objective}/seed{seed}",
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} -m pipelines.train_ppo {params.hp}"
        " --policy {input.policy} --members {input.members} --member-ids {params.ids}"
        " --objective {params.objective} {params.gold} {params.verifier}"
        " --train-prompts {input.train} --eval-prompts {input.test}"
        " --seed {wildcards.seed} --out {params.out}"
        " --checkpoint-dir {params.ckpt} > {log} 2>&1"
