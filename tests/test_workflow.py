"""Snakemake end to end: dry runs, the tiny all_data study, and bad input."""

import copy
import csv
import json
import os
import random
import re

import pytest
import yaml

from pipelines.common.records import read_pairs
from pipelines.domains import domain_module

from .conftest import ROOT, TINY_CONFIG, run_snakemake


def only_domain(cfg: dict, domain: str) -> None:
    """Point every study of a config at one domain."""
    cfg["rm"]["trainsets"] = [domain]
    cfg["rm"]["mixtures"] = {}
    cfg["bon"]["domains"] = [domain]
    cfg["bon"]["trainset"] = domain
    cfg["merge"].update(rm_trainset=domain, domains=[], bon_domains=[])


def test_dry_run_all_default_config(snakemake_workdir):
    res = run_snakemake(
        "-n", "all", workdir=snakemake_workdir, configfile=ROOT / "workflow_config.yaml"
    )
    assert res.returncode == 0, res.stderr
    assert "build_prefs" in res.stdout
    assert not list(snakemake_workdir.glob("results/**/*.jsonl"))


def test_dry_run_one_file_builds_only_its_domain(snakemake_workdir):
    res = run_snakemake("-n", "results/data/math/test.jsonl", workdir=snakemake_workdir)
    assert res.returncode == 0, res.stderr
    assert "domain=math" in res.stdout
    assert "domain=code" not in res.stdout and "domain=general" not in res.stdout


def test_verifier_settings_reach_only_their_domains_jobs(snakemake_workdir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["sandbox"] = {"backend": "rlimit"}
    cfg["data"]["math_extraction"] = "regex"
    path = tmp_path / "verifier.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_snakemake(
        "-n", "-p", "all_bon", workdir=snakemake_workdir, configfile=path
    )
    assert res.returncode == 0, res.stderr
    commands = [
        line
        for line in res.stdout.splitlines()
        if "pipelines.build_prefs" in line or "pipelines.generate_candidates" in line
    ]
    by_domain = {}
    for line in commands:
        domain = line.split("--domain ")[1].split()[0]
        by_domain.setdefault(domain, []).append(line)
    assert set(by_domain) >= {"general", "math", "code"}
    for domain, lines in by_domain.items():
        for line in lines:
            assert ("--sandbox-backend rlimit" in line) == (domain == "code"), line
            assert ("--math-extraction regex" in line) == (domain == "math"), line


@pytest.mark.slow
def test_all_data_tiny(snakemake_workdir):
    res = run_snakemake("--cores", "2", "all_data", workdir=snakemake_workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = yaml.safe_load(TINY_CONFIG.read_text())["data"]
    rng = random.Random(0)
    for domain in cfg["domains"]:
        module = domain_module(domain)
        prompts = {}
        for split, size in cfg["sizes"].items():
            recs = read_pairs(
                snakemake_workdir / f"results/data/{domain}/{split}.jsonl"
            )
            assert 0.8 * size <= len(recs) <= size, (domain, split, len(recs))
            prompts[split] = {r["prompt"][0]["content"] for r in recs}
            # re-verify a sample from scratch, from the stored task only
            sample = rng.sample(recs, min(8, len(recs)))
            chosen = [
                (r["metadata"]["task"], r["chosen"][-1]["content"]) for r in sample
            ]
            rejected = [
                (r["metadata"]["task"], r["rejected"][-1]["content"]) for r in sample
            ]
            assert all(module.verify_many(chosen, workers=2)), (domain, split)
            assert not any(module.verify_many(rejected, workers=2)), (domain, split)
        assert not prompts["train"] & prompts["test"]
        sft_path = snakemake_workdir / f"results/data/sft/{domain}/train.jsonl"
        sft = [json.loads(x) for x in sft_path.read_text().splitlines()]
        assert len(sft) >= 0.8 * cfg["sft_size"]
        assert not {r["messages"][0]["content"] for r in sft} & prompts["test"]
        log = (snakemake_workdir / f"logs/build_prefs/{domain}.log").read_text()
        assert f"{domain}/train:" in log
    # a second run has nothing to do
    res = run_snakemake("-n", "all_data", workdir=snakemake_workdir)
    assert "Nothing to be done" in res.stdout + res.stderr


def test_bad_source_file_fails_and_leaves_no_output(snakemake_workdir, tmp_path):
    bad = tmp_path / "chat.jsonl"
    rows = [
        {"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(9)
    ]
    rows[4] = {"prompt": "q4", "chosen": "same", "rejected": "same"}
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["data"]["domains"] = ["chat"]
    cfg["data"]["sources"] = {"chat": {"path": str(bad)}}
    only_domain(cfg, "chat")
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = run_snakemake(
        "--cores", "1", "all_data", workdir=snakemake_workdir, configfile=cfg_path
    )
    assert res.returncode != 0
    assert not list(snakemake_workdir.glob("results/data/**/*.jsonl"))
    assert not [p for p in snakemake_workdir.glob("results/data/**/*") if p.is_file()]
    log = (snakemake_workdir / "logs/build_prefs/chat.log").read_text()
    assert f"{bad}: row 5: field 'rejected': identical to chosen" in log

    # the same file with on_invalid: skip builds, dropping and counting the row
    cfg["data"]["on_invalid"] = "skip"
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = run_snakemake(
        "--cores", "1", "all_data", workdir=snakemake_workdir, configfile=cfg_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    n = sum(
        len(read_pairs(snakemake_workdir / f"results/data/chat/{s}.jsonl"))
        for s in ("train", "test")
    )
    assert n == 8
    log = (snakemake_workdir / "logs/build_prefs/chat.log").read_text()
    assert "kept 8, skipped 1" in log


def test_unknown_domain_is_refused_at_parse_time(snakemake_workdir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["data"]["domains"] = ["poetry"]
    only_domain(cfg, "poetry")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = run_snakemake("-n", "all", workdir=snakemake_workdir, configfile=cfg_path)
    assert res.returncode != 0
    assert "'poetry', which has no generator" in res.stdout + res.stderr


def test_wrong_config_key_stops_the_run(snakemake_workdir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["data"]["polite_rate"] = 0.1
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = run_snakemake("-n", "all", workdir=snakemake_workdir, configfile=cfg_path)
    assert res.returncode != 0
    assert "polite_rate" in res.stdout + res.stderr


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(
        line.strip()
        for line in readme.splitlines()
        if "pytest" in line and "pip" in line
    )
    assert test_cmd in ci


def _job_blocks(out: str) -> list[tuple[str, str]]:
    """(rule, block text) of every job a dry run prints."""
    parts = re.split(r"\n(?=(?:local)?rule \w+:\n)", out)
    blocks = []
    for part in parts:
        match = re.match(r"(?:local)?rule (\w+):\n", part)
        if match:
            blocks.append((match.group(1), part))
    return blocks


def _jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {name: int(count) for name, count in rows}


def test_uwo_target_dry_run_lists_only_its_ancestors(snakemake_workdir):
    res = run_snakemake(
        "-n", "results/bon/ensemble_uwo.json", workdir=snakemake_workdir
    )
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    n_seeds, n_bon = len(cfg["rm"]["seeds"]), len(cfg["bon"]["domains"])
    assert _jobs(res.stdout) == {
        "build_prefs": len(cfg["data"]["domains"]),  # the tokenizer reads every domain
        "train_tokenizer": 1,
        "train_sft": 1,  # the general policy only
        "train_gold": 1,  # the gold RM: it labels the members' pairs ...
        "label_gold": 1,  # ... of the policy's replies to train prompts
        "train_rm": n_seeds,  # the members, of bon.trainset only
        "generate_candidates": n_bon,  # ... and scores their candidates
        "score_model": n_seeds,  # the members only: no merged model, no other RM
        "bon_ensemble": 1,
    }


def test_armo_dry_run_lists_only_what_it_needs(snakemake_workdir):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    n_domains, shards = len(cfg["data"]["domains"]), cfg["armo"]["shards"]
    res = run_snakemake("-n", "all_armo", workdir=snakemake_workdir)
    assert res.returncode == 0, res.stderr
    assert _jobs(res.stdout) == {
        "build_prefs": n_domains,
        "train_tokenizer": 1,
        "train_sft": 1,  # the general SFT model: the backbone RM's base
        "train_rm": 1,  # the backbone (armo.backbone), no other RM
        "build_armo_data": 2,  # multi-objective responses, preference pairs
        # both sets and every domain's test split, each in armo.shards jobs
        "extract_embeddings": (2 + n_domains) * shards,
        "fit_ridge": 1,
        "train_gating": 1,
        "build_armo": 1,
        "score_model": 2,  # the ArmoRM and its backbone as a BT RM
        "eval_rm": 2 * n_domains,  # both on every domain's test split
        "eval_armo": 1,
        "report_armo": 1,
        "all_armo": 1,
    }


def test_an_active_iteration_needs_only_the_iterations_before_it(snakemake_workdir):
    target = "results/active/math/uncertainty/seed1/iter2/model"
    res = run_snakemake("-n", "-p", target, workdir=snakemake_workdir)
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    # iterations 1 and 2 of this strategy and seed only; the start RM and its
    # ancestors; no other seed, strategy or domain, no evaluation
    assert jobs["select_active"] == 2 and jobs["train_active"] == 2
    assert jobs["train_rm"] == 1 and "score_model" not in jobs
    assert "seed0" not in res.stdout.split("Job stats")[0].replace("seed0.log", "")
    assert "/random/" not in res.stdout
    # iteration 2 draws from iteration 1's rest, scored by iteration 1's model
    out = res.stdout + res.stderr
    assert "--pool results/active/math/uncertainty/seed1/iter1/rest.jsonl" in out
    assert "--model results/active/math/uncertainty/seed1/iter1/model" in out
    # random needs no model to select
    res = run_snakemake(
        "-n",
        "-p",
        "results/active/math/random/seed0/iter1/selection.json",
        workdir=snakemake_workdir,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "--model" not in out and "--strategy random" in out


def test_transfer_sizes_add_or_drop_only_their_runs(snakemake_workdir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    res = run_snakemake("-n", "all_transfer", workdir=snakemake_workdir)
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    t = cfg["transfer"]
    directions = sum(s != g for s in t["sources"] for g in t["targets"])
    runs = directions * len(t["sizes"]) * len(t["seeds"]) + len(t["targets"])
    assert jobs["train_transfer"] == runs  # ground truths included
    more = copy.deepcopy(cfg)
    more["transfer"]["sizes"] = [*t["sizes"], 32]
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump(more, sort_keys=False))
    res = run_snakemake(
        "-n", "-p", "all_transfer", workdir=snakemake_workdir, configfile=path
    )
    assert res.returncode == 0, res.stderr
    grown = _jobs(res.stdout)
    assert grown["train_transfer"] == runs + directions * len(t["seeds"])
    out = res.stdout + res.stderr
    assert "/n32/" in out and "--max-pairs 32 --subset-seed 0" in out


def test_ppo_runs_need_only_their_proxies(snakemake_workdir):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    n_seeds = len(cfg["rm"]["seeds"])
    common = {
        "build_prefs": len(cfg["data"]["domains"]),
        "train_tokenizer": 1,
        "train_sft": 1,  # the general policy only
        "train_gold": 1,
        "label_gold": 1,
        "train_ppo": 1,
    }
    for target, members in (
        ("results/ppo/ensemble_uwo/seed0/eval.jsonl", n_seeds),
        ("results/ppo/single/seed1/eval.jsonl", 1),  # the proxy of seed 1 alone
    ):
        res = run_snakemake("-n", target, workdir=snakemake_workdir)
        assert res.returncode == 0, res.stderr
        assert _jobs(res.stdout) == {**common, "train_rm": members}, target
    # the wildcard picks the objective; PPO keeps its own UWO ddof (1), not BoN's
    work = snakemake_workdir
    res = run_snakemake(
        "-n", "-p", "results/ppo/ensemble_wco/seed0/eval.jsonl", workdir=work
    )
    assert "--objective wco" in res.stdout and "--uwo-ddof 1" in res.stdout


@pytest.mark.slow
def test_all_tiny_end_to_end(snakemake_workdir, tmp_path):
    """One target builds only its ancestors; then the whole tiny study."""
    work = snakemake_workdir
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    res = run_snakemake("--cores", "2", "results/bon/ensemble_uwo.json", workdir=work)
    assert res.returncode == 0, res.stderr[-3000:]
    uwo = json.loads((work / "results/bon/ensemble_uwo.json").read_text())
    ns = [row["n"] for row in uwo["results"]]
    assert ns == cfg["bon"]["sample_ns"]
    assert uwo["uwo_lambda"] == cfg["bon"]["uwo_lambda"]
    assert not (work / "results/eval").exists()  # nothing else was built
    assert not (work / "results/models/sft/math").exists()
    assert not list(work.glob("results/bon/seed*.json"))

    # changing bon.uwo_lambda reruns only the ensemble step
    changed = copy.deepcopy(cfg)
    changed["bon"]["uwo_lambda"] = 0.25
    changed_path = tmp_path / "changed.yaml"
    changed_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    res = run_snakemake(
        "-n", "results/bon/ensemble_uwo.json", workdir=work, configfile=changed_path
    )
    assert res.returncode == 0, res.stderr
    assert _jobs(res.stdout) == {"bon_ensemble": 1}

    res = run_snakemake("--cores", "2", "all", workdir=work)
    assert res.returncode == 0, res.stderr[-3000:]
    for domain in cfg["data"]["domains"]:
        assert (work / f"results/models/sft/{domain}/model.safetensors").exists()
    for trainset in cfg["rm"]["trainsets"]:
        for seed in cfg["rm"]["seeds"]:
            model = work / f"results/models/rm/{trainset}/seed{seed}"
            assert (model / "config.json").exists()
            ckpt = work / f"results/checkpoints/train_rm/{trainset}/seed{seed}"
            assert not ckpt.exists()
            for domain in cfg["data"]["domains"]:
                out = work / f"results/eval/rm-{trainset}-seed{seed}/{domain}-test.json"
                result = json.loads(out.read_text())
                assert result["n_pairs"] == len(
                    read_pairs(work / f"results/data/{domain}/test.jsonl")
                )
                assert 0.0 <= result["accuracy"] <= 1.0
                assert result["settings"]["max_length"] == cfg["eval"]["max_length"]
    csv = (work / "results/report/eval.csv").read_text().splitlines()
    assert csv[0].startswith("model_id,trainset,seed,benchmark")
    png = b"\x89PNG\r\n\x1a\n"
    assert (work / "results/report/eval.png").read_bytes()[:8] == png
    assert (work / "results/report/bon.png").read_bytes()[:8] == png
    bon_rows = (work / "results/report/bon.csv").read_text().splitlines()
    names = {row.split(",")[0] for row in bon_rows[1:]}
    expected = {f"seed{s}" for s in cfg["rm"]["seeds"]}
    expected |= {"ensemble_mean", "ensemble_wco", "ensemble_uwo"}
    expected |= {f"ensemble_uwo-{x:g}" for x in cfg["bon"]["uwo_weights"]}
    assert names == expected
    # DogeRM: w=0 is the plain RM, so its scores equal the RM's; each model's
    # score_model job pools its own inputs into batches, hence 1e-6, not ==
    rm = f"rm-{cfg['merge']['rm_trainset']}-seed{cfg['merge']['rm_seed']}"
    for domain in cfg["data"]["domains"]:
        plain = json.loads((work / f"results/eval/{rm}/{domain}-test.json").read_text())
        for lm in cfg["merge"]["domains"]:
            path = work / f"results/eval/merged-{lm}-w0/{domain}-test.json"
            merged = json.loads(path.read_text())
            assert [p["id"] for p in merged["pairs"]] == [
                p["id"] for p in plain["pairs"]
            ]
            for a, b in zip(merged["pairs"], plain["pairs"], strict=True):
                assert a["chosen"] == pytest.approx(b["chosen"], abs=1e-6)
                assert a["rejected"] == pytest.approx(b["rejected"], abs=1e-6)
    dogerm = (work / "results/report/dogerm.csv").read_text()
    for weight in cfg["merge"]["weights"]:
        assert f"merged-math-w{weight:g}" in dogerm
    assert (work / "results/report/dogerm.png").read_bytes()[:8] == png
    # ArmoRM: the assembled model, scored end to end by score_model/eval_rm,
    # agrees with its parts applied to the extracted embeddings (float noise
    # may flip a near-tie)
    armo = json.loads((work / "results/armo/eval.json").read_text())
    assert set(armo["domains"]) == set(cfg["data"]["domains"])
    for entry in armo["domains"].values():
        tol = 1.5 / entry["n_pairs"]
        assert entry["scored_accuracy"] == pytest.approx(
            entry["accuracy"]["armo"], abs=tol
        )
    shards = sorted(work.glob("results/armo/embeddings/preference/train/shard*"))
    assert [p.name for p in shards] == [
        f"shard{i}-of-{cfg['armo']['shards']}.safetensors"
        for i in range(cfg["armo"]["shards"])
    ]
    assert (work / "results/report/armo.png").read_bytes()[:8] == png
    _check_transfer_and_active(work, cfg)
    res = run_snakemake("-n", "all", workdir=work)
    assert "Nothing to be done" in res.stdout + res.stderr
    _inspect_and_rerun(work, cfg, tmp_path)


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _check_transfer_and_active(work, cfg):
    """Both studies ran in `all`: their reports hold every eval they read."""
    with open(work / "results/report/transfer.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    t = cfg["transfer"]
    runs = [r for r in rows if r["kind"] == "run"]
    assert len(runs) == sum(s != g for s in t["sources"] for g in t["targets"]) * len(
        t["sizes"]
    ) * len(t["seeds"])
    assert {r["target"] for r in rows if r["kind"] == "ground_truth"} == set(
        t["targets"]
    )
    for r in rows:
        if r["eval_json"]:
            result = json.loads((work / r["eval_json"]).read_text())
            assert float(r["accuracy"]) == pytest.approx(result["accuracy"], abs=1e-6)
            assert result["n_pairs"] == int(r["n_test_pairs"])
    a = cfg["active"]
    with open(work / "results/report/active.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for domain in a["domains"]:
        train = _ids(work / f"results/data/{domain}/train.jsonl")
        for strategy in a["strategies"]:
            for seed in a["seeds"]:
                run = work / f"results/active/{domain}/{strategy}/seed{seed}"
                pool, drawn = set(train), set()
                for i in range(1, a["iterations"] + 1):
                    picked = _ids(run / f"iter{i}/selected.jsonl")
                    rest = _ids(run / f"iter{i}/rest.jsonl")
                    # k new pairs from the pool, the rest is the next pool
                    assert len(picked) == a["k"] and set(picked) <= pool
                    assert set(rest) == pool - set(picked) and not drawn & set(picked)
                    pool, drawn = set(rest), drawn | set(picked)
                    row = [
                        r
                        for r in rows
                        if (r["strategy"], r["seed"], r["iteration"])
                        == (strategy, str(seed), str(i))
                    ]
                    assert len(row) == 1 and int(row[0]["n_labelled"]) == len(drawn)
                    result = json.loads((work / row[0]["eval_json"]).read_text())
                    assert float(row[0]["accuracy"]) == pytest.approx(
                        result["accuracy"], abs=1e-6
                    )
    for name in ("transfer", "active"):
        assert (work / f"results/report/{name}.png").read_bytes()[
            :8
        ] == b"\x89PNG\r\n\x1a\n"


def _inspect_and_rerun(work, cfg, tmp_path):
    """The README's 'Inspect before you run' and 'Rerun one target' commands."""

    def dry(*args, config=None):
        res = run_snakemake(
            *args, workdir=work, **({"configfile": config} if config else {})
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout + res.stderr

    # --dag/--rulegraph take an optional format: the target goes first
    assert dry("all", "--rulegraph").lstrip().startswith("digraph")
    assert "train_rm" in dry("all_bon", "--dag")
    summary = dry("--summary", "all")
    assert "results/models/rm/general-math/seed0" in summary and "ok" in summary

    # a hyperparameter of one stage reruns that stage and what depends on it
    changed = copy.deepcopy(cfg)
    changed["rm"]["learning_rate"] = 1e-4
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    for kind in ("code", "input"):  # nothing changed since the run
        assert "results/" not in dry("--list-changes", kind)
    out = dry("-n", "all", config=path)
    assert "reason: Params have changed since last execution" in out
    assert "--learning-rate 0.0001" in out
    jobs = _jobs(out)
    # the seeded RMs and the transfer sources trained here (one seed each)
    sources = [s for s in cfg["transfer"]["sources"] if s not in cfg["rm"]["trainsets"]]
    assert jobs["train_rm"] == len(cfg["rm"]["seeds"]) * len(
        cfg["rm"]["trainsets"]
    ) + len(sources)
    assert "train_sft" not in jobs and "build_prefs" not in jobs
    assert {"eval_rm", "score_model", "merge_dogerm"} <= set(jobs)

    # compute sizes are not science: changing them reruns nothing
    changed = copy.deepcopy(cfg)
    changed["compute"] = {"train_rm": {"mem_mb": 12345, "runtime": 99}}
    path = tmp_path / "compute.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert "Nothing to be done" in dry("-n", "all", config=path)

    # --forcerun one rule: it and its descendants; --until: only its ancestors
    jobs = _jobs(dry("-n", "all", "--forcerun", "bon_ensemble"))
    assert set(jobs) == {"bon_ensemble", "report_bon", "report_summary", "all"}
    report = work / "results/report/bon.csv"
    before = report.stat().st_mtime_ns, (work / "results/bon/ensemble_uwo.json")
    res = run_snakemake(
        "--cores",
        "2",
        "all",
        "--forcerun",
        "bon_ensemble",
        "--until",
        "bon_ensemble",
        workdir=work,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert _jobs(res.stdout + res.stderr) == {
        "bon_ensemble": len(cfg["bon"]["uwo_weights"]) + 3
    }
    assert report.stat().st_mtime_ns == before[0]  # stopped before the report
    assert before[1].stat().st_mtime_ns > before[0]


def test_one_rm_needs_only_its_ancestors(snakemake_workdir):
    res = run_snakemake(
        "-n", "results/models/rm/general-math/seed0", workdir=snakemake_workdir
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for rule in ("build_prefs", "train_tokenizer", "train_sft", "train_rm"):
        assert f"rule {rule}:" in out
    assert "eval_rm" not in out and "seed1" not in out
    assert "domain=code" in out  # the tokenizer reads every domain's train data
    assert out.count("rule train_sft:") == 1  # only the general SFT model


def test_dogerm_dry_run_lists_merges_and_evaluations(snakemake_workdir):
    res = run_snakemake("-n", "all_dogerm", workdir=snakemake_workdir)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    merges = len(cfg["merge"]["domains"]) * len(cfg["merge"]["weights"])
    jobs = _jobs(res.stdout)
    assert jobs["merge_dogerm"] == merges
    assert jobs["eval_rm"] == merges * len(cfg["data"]["domains"])
    assert jobs["score_model"] == merges  # one job per merged model, all inputs
    assert jobs["train_rm"] == 1  # only the RM that is merged
    rm = f"rm-{cfg['merge']['rm_trainset']}-seed{cfg['merge']['rm_seed']}"
    assert f"results/models/merged/{rm}__sft-math/w0.5" in res.stdout


def _as_if_built(work, config=TINY_CONFIG):
    """A workdir whose every output of ``all`` exists with Snakemake metadata.

    The outputs are empty placeholders (folders for the model outputs), then
    ``--touch --forceall`` records each job as run with the current config, so
    a later dry run shows what a config change reruns, and why, in seconds.
    """
    res = run_snakemake("--summary", "all", workdir=work, configfile=config)
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines()[1:]:
        path = line.split("\t")[0]
        if not path.startswith("results/"):
            continue
        target = work / path
        ppo_policy = path.startswith("results/ppo/") and path.endswith("/policy")
        folders = ("results/models/", "results/tokenizer", "results/transfer/")
        active_model = path.startswith("results/active/") and path.endswith("/model")
        if path.startswith(folders) or ppo_policy or active_model:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    res = run_snakemake(
        "--touch", "--forceall", "--cores", "1", "all", workdir=work, configfile=config
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_snakemake("-n", "all", workdir=work, configfile=config)
    assert "Nothing to be done" in res.stdout + res.stderr


def test_adding_a_benchmark_rescores_each_model_once_and_nothing_upstream(
    snakemake_workdir, tmp_path
):
    """A new benchmark: one score_model job per scored model (one load each, as
    the one eval job per model was; it copies the unchanged inputs' scores,
    tests/unit/test_score_model.py), then only torch-free jobs; no training,
    generation or merging. A tie rule: the torch-free evals only."""
    work = snakemake_workdir
    _as_if_built(work)
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    extra = work / "extra.jsonl"
    extra.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    os.utime(extra, (0, 0))  # older than every output: only the config changed
    added = copy.deepcopy(cfg)
    added["eval"]["benchmarks"] = {"extra": {"kind": "standard", "path": "extra.jsonl"}}
    path = tmp_path / "added.yaml"
    path.write_text(yaml.safe_dump(added, sort_keys=False))
    res = run_snakemake("-n", "all", workdir=work, configfile=path)
    assert res.returncode == 0, res.stderr
    jobs = _jobs(res.stdout)
    n_rms = len(cfg["rm"]["seeds"]) * len(cfg["rm"]["trainsets"])
    n_merged = len(cfg["merge"]["domains"]) * len(cfg["merge"]["weights"])
    n_benchmarks = len(cfg["data"]["domains"]) + 1
    n_bon = len(cfg["bon"]["uwo_weights"]) + 3
    n_scored = n_rms + n_merged + 1  # and the ArmoRM
    assert jobs == {
        "score_model": n_scored,
        "eval_rm": n_scored * n_benchmarks,  # read the new stores
        "bon_single": len(cfg["rm"]["seeds"]),  # idem: cheap, torch-free
        "bon_ensemble": n_bon,
        "report_eval": 1,
        "report_bon": 1,
        "report_dogerm": 1,
        "report_summary": 1,  # the opening page reads the evals and tables
        "eval_armo": 1,  # reads the ArmoRM's rewritten domain evals
        "report_armo": 1,
        # the active-learning start is one of the rescored RMs: its evals are
        # rewritten; transfer and active models keep their one split, and so do
        # the transfer sources trained only as sources
        "report_active": 1,
        "all": 1,
    }
    assert cfg["active"]["start"] in {
        f"rm-{t}-seed{s}" for t in cfg["rm"]["trainsets"] for s in cfg["rm"]["seeds"]
    }
    scoring = [b for r, b in _job_blocks(res.stdout) if r == "score_model"]
    assert len(scoring) == n_scored
    for block in scoring:
        assert "Params have changed since last execution" in block
        assert "--benchmark extra" in block

    ties = copy.deepcopy(cfg)
    ties["eval"]["ties"] = "half"
    path = tmp_path / "ties.yaml"
    path.write_text(yaml.safe_dump(ties, sort_keys=False))
    res = run_snakemake("-n", "all", workdir=work, configfile=path)
    assert res.returncode == 0, res.stderr
    # every eval: the transfer and active models' (one split each) and the
    # source-only RMs' zero-shot evals too
    t, a = cfg["transfer"], cfg["active"]
    directions = [(s, g) for s in t["sources"] for g in t["targets"] if s != g]
    n_transfer = len(directions) * len(t["sizes"]) * len(t["seeds"]) + len(t["targets"])
    n_active = (
        len(a["domains"]) * len(a["strategies"]) * len(a["seeds"]) * a["iterations"]
    )
    n_zero_shot = sum(s not in cfg["rm"]["trainsets"] for s, _ in directions)
    assert _jobs(res.stdout) == {
        "eval_rm": n_scored * (n_benchmarks - 1) + n_transfer + n_active + n_zero_shot,
        "report_eval": 1,
        "report_dogerm": 1,
        "report_summary": 1,
        "eval_armo": 1,  # the ArmoRM's evals are rewritten
        "report_armo": 1,
        "report_transfer": 1,
        "report_active": 1,
        "all": 1,
    }


def test_a_gold_change_reruns_labels_proxies_and_bon_not_the_sft(
    snakemake_workdir, tmp_path
):
    """The gold RM's settings reach the gold, the gold-labelled pairs, the
    proxies trained on them and the candidates' gold; never the data, the
    tokenizer or the SFT models, nor the RMs of other trainsets."""
    work = snakemake_workdir
    _as_if_built(work)
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    n_seeds = len(cfg["rm"]["seeds"])
    for section, key, value in (
        ("train", "learning_rate", 2.5e-4),  # the gold RM itself
        ("label", "noise", 0.25),  # only the labels
    ):
        changed = copy.deepcopy(cfg)
        changed["gold"][section][key] = value
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        res = run_snakemake("-n", "all", workdir=work, configfile=path)
        assert res.returncode == 0, res.stderr
        jobs = _jobs(res.stdout)
        assert not {"build_prefs", "train_tokenizer", "train_sft"} & set(jobs)
        assert "merge_dogerm" not in jobs
        assert jobs["label_gold"] == 1
        assert jobs["train_rm"] == n_seeds  # the gold-labelled proxies only
        rms = [b for r, b in _job_blocks(res.stdout) if r == "train_rm"]
        assert all("trainset=gold-labelled" in b for b in rms)
        assert {"bon_single", "bon_ensemble", "report_bon"} <= set(jobs)
        # PPO trains against those proxies and is judged by that gold
        n_ppo = len(cfg["ppo"]["objectives"]) * len(cfg["ppo"]["seeds"])
        assert jobs["train_ppo"] == n_ppo and jobs["report_ppo"] == 1
        if section == "train":
            assert jobs["train_gold"] == 1
            # the candidates carry the gold's scores: they are redone
            assert jobs["generate_candidates"] == len(cfg["bon"]["domains"])
        else:
            assert "train_gold" not in jobs and "generate_candidates" not in jobs
