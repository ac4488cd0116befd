# Helpers only (no rules): constants from the config, wildcard constraints,
# input functions, parameter rendering and target lists.
import json
import re
import shlex
from pathlib import Path

DOMAINS = list(config["data"]["domains"])
SPLITS = sorted(config["data"]["sizes"])
GENERATED_DOMAINS = ("general", "math", "code")


wildcard_constraints:
    domain="|".join(DOMAINS),
    split="|".join(SPLITS),


def cli_args(section, exclude=()):
    """Render a config section as --kebab-case flags (JSON for lists and dicts)."""
    values = lookup(dpath=section, within=config)
    parts = []
    for key, value in sorted(values.items()):  # YAML key order must not rerun jobs
        if key in exclude or value is None:
            continue  # None keeps the function's own default (no flag)
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(value))}")
    return " ".join(parts)


def chat_template_file(section):
    """A section's chat_template given as a file, as an input: editing it reruns.

    Jinja text (and null) is passed as a flag only, by cli_args.
    """
    value = lookup(dpath=f"{section}/chat_template", within=config)
    if value is None or "{{" in value or "{%" in value:
        return []
    return [value]


COMPUTE = config["compute"]


def job_threads(name):
    """Threads of a rule's jobs (compute.<name>.cpus; sbatch --cpus-per-task)."""
    return COMPUTE[name]["cpus"]


def job_resources(name):
    """Scheduler resources of a rule's jobs from compute.<name>.

    mem_mb and runtime always; gpu for GPU-capable rules (0 = CPU, which the
    Slurm plugin turns into no --gpus flag); gpu_model only when set and a GPU
    is asked for (sbatch --gpus=<model>:<n>).
    """
    spec = COMPUTE[name]
    out = {"mem_mb": spec["mem_mb"], "runtime": spec["runtime"]}
    if "gpu" in spec:
        out["gpu"] = spec["gpu"]
        if spec["gpu_model"] and spec["gpu"] > 0:
            out["gpu_model"] = spec["gpu_model"]
    return out


def launcher(wildcards, resources):
    """The Python launcher of a training job, one process per GPU it was given.

    0 or 1 GPU: a plain ``python``. 2 or more: ``accelerate launch`` with the
    DDP or DeepSpeed ZeRO config of compute.strategy. Reads the job's resolved
    resources, so --set-resources <name>:gpu=N in a profile is honoured.
    """
    gpus = int(resources.gpu)
    if gpus <= 1:
        return "python"
    strategy = f"accelerate/{COMPUTE['strategy']}.yaml"
    return (
        f"accelerate launch --config_file {strategy} --num_machines 1"
        f" --num_processes {gpus}"
    )


def _domain_source(domain):
    source = config["data"]["sources"].get(domain)
    if source is None and domain not in GENERATED_DOMAINS:
        raise ValueError(
            f"data.domains lists {domain!r}, which has no generator "
            f"({', '.join(GENERATED_DOMAINS)}) and no entry under data.sources"
        )
    return source


def _source_entries(source):
    if "splits" in source:
        return list(source["splits"].values())
    return [source]


def pref_source_files(wildcards):
    """Local files a domain's source reads, so that editing them reruns the job."""
    source = _domain_source(wildcards.domain)
    if source is None:
        return []
    return [e["path"] for e in _source_entries(source) if "path" in e]


def pref_source_arg(wildcards):
    """The --source flag of build_prefs for a domain (empty when generated)."""
    source = _domain_source(wildcards.domain)
    if source is None:
        return ""
    return f"--source {shlex.quote(json.dumps(source, sort_keys=True))}"


def verifier_args(wildcards):
    """The verifier flags of a domain's job, only those its verifier uses.

    So switching the sandbox backend reruns code data and code gold only, and
    the math extraction mode math only.
    """
    if wildcards.domain == "math":
        return f"--math-extraction {config['data']['math_extraction']}"
    if wildcards.domain == "code":
        return f"--sandbox-backend {config['sandbox']['backend']}"
    return ""


def data_targets():
    """Every preference split and SFT file of every configured domain."""
    pairs = expand("results/data/{domain}/{split}.jsonl", domain=DOMAINS, split=SPLITS)
    sft = expand("results/data/sft/{domain}/train.jsonl", domain=DOMAINS)
    return [*pairs, *sft]


def all_targets():
    """Everything the active preset builds (later studies add theirs)."""
    return [
        *data_targets(),
        *sft_targets(),
        *report_eval_targets(),
        *report_bon_targets(),
        *report_dogerm_targets(),
        *report_ppo_targets(),
        *report_armo_targets(),
        *report_transfer_targets(),
        *report_active_targets(),
    ]


# ---- models: tokenizer, SFT, reward models ---------------------------------
TINY = config["models"]["policy"] is None
RM_SEEDS = [int(s) for s in config["rm"]["seeds"]]
RM_TRAINSETS = list(config["rm"]["trainsets"])
MIXTURES = dict(config["rm"]["mixtures"])
DOMAIN_BENCHMARKS = {f"{d}-test": d for d in DOMAINS}
BENCHMARKS = {
    **{
        name: {"kind": "standard", "path": f"results/data/{d}/test.jsonl"}
        for name, d in DOMAIN_BENCHMARKS.items()
    },
    **config["eval"]["benchmarks"],
}


GOLD_LABELLED = "gold-labelled"  # the trainset of pairs labelled by the gold
# The transfer study starts from the RM of each source domain (rm-<domain>-
# seed<source_seed>), trained by train_rm like the rm.trainsets.
# Transfer and active learning run on the configured domains among data.domains
# (restricting data.domains restricts them too).
TRANSFER = config["transfer"]
TRANSFER_SOURCES = [d for d in TRANSFER["sources"] if d in DOMAINS]
TRANSFER_TARGETS = [d for d in TRANSFER["targets"] if d in DOMAINS]
TRANSFER_RMS = [s for s in TRANSFER_SOURCES if s not in TRANSFER["source_models"]]
TRAINED_SETS = [*RM_TRAINSETS, *(s for s in TRANSFER_RMS if s not in RM_TRAINSETS)]


def _check_trainsets():
    for trainset in TRAINED_SETS:
        if trainset == GOLD_LABELLED:
            continue
        for domain in MIXTURES.get(trainset, [trainset]):
            if domain not in DOMAINS:
                raise ValueError(
                    f"rm.trainsets: {trainset!r} needs domain {domain!r},"
                    f" which is not in data.domains {DOMAINS}"
                )


_check_trainsets()


wildcard_constraints:
    trainset="|".join(TRAINED_SETS),
    seed=r"\d+",
    model_id=r"[a-z0-9][a-z0-9.-]*",
    benchmark="|".join(BENCHMARKS),


def trainset_domains(trainset):
    """The domains whose train splits make up a trainset (a domain or mixture)."""
    return MIXTURES.get(trainset, [trainset])


def rm_train_pairs(wildcards):
    if wildcards.trainset == GOLD_LABELLED:
        return [f"results/data/{GOLD_LABELLED}/train.jsonl"]
    return [
        f"results/data/{d}/train.jsonl" for d in trainset_domains(wildcards.trainset)
    ]


def _is_local(name):
    return name is not None and Path(name).exists()


def tokenizer_data():
    """Train splits and SFT data of every domain: the tiny tokenizer's corpus."""
    pairs = expand("results/data/{domain}/train.jsonl", domain=DOMAINS)
    return [*pairs, *expand("results/data/sft/{domain}/train.jsonl", domain=DOMAINS)]


def sft_base_input(wildcards):
    """Local inputs an SFT job starts from (the general model or the tokenizer)."""
    if wildcards.domain != "general":
        return ["results/models/sft/general"]
    if TINY:
        return ["results/tokenizer"]
    policy = config["models"]["policy"]
    return [policy] if _is_local(policy) else []


def sft_base_arg(wildcards):
    """--base/--tokenizer flags of train_sft: domain LMs continue from general."""
    if wildcards.domain != "general":
        return "--base results/models/sft/general"
    if TINY:
        return "--tokenizer results/tokenizer"
    return f"--base {shlex.quote(config['models']['policy'])}"


def _rm_base():
    base = config["models"]["rm_base"]
    return "results/models/sft/general" if base is None else base


def rm_base_input(wildcards):
    base = _rm_base()
    if base == "results/models/sft/general" or _is_local(base):
        return [base]
    return []


def rm_base_arg(wildcards):
    return f"--base {shlex.quote(_rm_base())}"


def rm_model_ids():
    """Ids of every seeded RM: rm-{trainset}-seed{seed}."""
    return expand("rm-{trainset}-seed{seed}", trainset=RM_TRAINSETS, seed=RM_SEEDS)


def model_path(model_id):
    """The folder of a scoreable model id (later studies add theirs)."""
    match = re.fullmatch(r"rm-(?P<trainset>.+)-seed(?P<seed>\d+)", model_id)
    if match and match["trainset"] in TRAINED_SETS:
        return f"results/models/rm/{match['trainset']}/seed{match['seed']}"
    match = re.fullmatch(
        r"merged-(?P<domain>[a-z0-9-]+)-w(?P<weight>[0-9.]+)", model_id
    )
    if match:
        return merged_path(match["domain"], match["weight"])
    if model_id == ARMO_ID:
        return ARMO_MODEL
    if model_id in EXTERNAL_MODELS:  # a hub id or folder named in the config
        return EXTERNAL_MODELS[model_id]
    if model_id in TRANSFER_MODELS:
        return TRANSFER_MODELS[model_id]
    if model_id in ACTIVE_MODELS:
        return ACTIVE_MODELS[model_id]
    raise ValueError(f"unknown model id {model_id!r} (known: {rm_model_ids()})")


def eval_model_input(wildcards):
    """A scored model as an input: built here or a local folder (a hub id: none)."""
    return _local_input(model_path(wildcards.model_id))


def eval_model_arg(wildcards):
    return shlex.quote(model_path(wildcards.model_id))


def benchmark_files(spec):
    """Local files a benchmark spec reads: its path and its prior sets' path."""
    files = [spec["path"]] if "path" in spec else []
    prior = spec.get("prior_sets")
    if isinstance(prior, dict) and "path" in prior:
        files.append(prior["path"])
    return files


def benchmark_input(wildcards):
    """Local files a benchmark reads, so that a rebuilt test split reruns evals."""
    return benchmark_files(BENCHMARKS[wildcards.benchmark])


def benchmark_arg(wildcards):
    return shlex.quote(json.dumps(BENCHMARKS[wildcards.benchmark], sort_keys=True))


def eval_targets():
    """Every seeded RM on every domain's test split and configured benchmark."""
    return expand(
        "results/eval/{model_id}/{benchmark}.json",
        model_id=rm_model_ids(),
        benchmark=list(BENCHMARKS),
    )


def sft_targets():
    """The SFT model of every domain (general = base policy, others = domain LMs)."""
    return expand("results/models/sft/{domain}", domain=DOMAINS)


def report_eval_targets():
    return ["results/report/eval.csv", "results/report/eval.png"]


# ---- the official RewardBench package (eval_rewardbench) ----------------------
RB_OFFICIAL = config["eval_rewardbench"]
RB_OFFICIAL_NAME = "rewardbench-official"


def _check_rb_official():
    if RB_OFFICIAL_NAME in BENCHMARKS:
        raise ValueError(
            f"eval.benchmarks: the name {RB_OFFICIAL_NAME!r} is taken by the"
            " eval_rewardbench rule's output; pick another"
        )


_check_rb_official()


def rewardbench_official_targets(group):
    """Official RewardBench results of the 'rms' or 'merged' models, if enabled."""
    if not RB_OFFICIAL["enabled"] or group not in RB_OFFICIAL["models"]:
        return []
    ids = rm_model_ids() if group == "rms" else merged_model_ids()
    return expand(
        "results/eval/{model_id}/{name}.json", model_id=ids, name=RB_OFFICIAL_NAME
    )


# ---- best-of-n ---------------------------------------------------------------
BON = config["bon"]
BON_DOMAINS = list(BON["domains"])
UWO_EXTRA = [float(x) for x in BON["uwo_weights"]]
BON_AGGS = ["mean", "wco", "uwo", *[f"uwo-{x:g}" for x in UWO_EXTRA]]


def _check_bon():
    missing = [d for d in BON_DOMAINS if d not in DOMAINS]
    if missing:
        raise ValueError(f"bon.domains {missing} are not in data.domains {DOMAINS}")
    if BON["trainset"] not in RM_TRAINSETS:
        raise ValueError(
            f"bon.trainset {BON['trainset']!r} is not in rm.trainsets {RM_TRAINSETS}"
        )


_check_bon()


wildcard_constraints:
    agg="|".join(re.escape(a) for a in BON_AGGS),


def bon_gens():
    return expand("results/bon/gens/{domain}.jsonl", domain=BON_DOMAINS)


def bon_member_ids():
    """The ensemble members: the seeded RMs of bon.trainset."""
    return expand("rm-{trainset}-seed{seed}", trainset=BON["trainset"], seed=RM_SEEDS)


def bon_member_scores():
    return [score_store(m) for m in bon_member_ids()]


def bon_member_ids_of_seed(wildcards):
    return [f"rm-{BON['trainset']}-seed{wildcards.seed}"]


def bon_member_scores_of_seed(wildcards):
    return [score_store(m) for m in bon_member_ids_of_seed(wildcards)]


def bon_estimate_args(wildcards):
    """Flags of bon_estimate: aggregate and UWO lambda come from the agg wildcard."""
    agg = getattr(wildcards, "agg", "single")
    ns = " ".join(str(n) for n in BON["sample_ns"])
    args = [
        f"--aggregate {agg.split('-')[0]}",
        f"--sample-ns '[{ns.replace(' ', ', ')}]'",
    ]
    if agg.startswith("uwo"):
        lam = BON["uwo_lambda"] if agg == "uwo" else float(agg.split("-", 1)[1])
        args += [f"--uwo-lambda {lam}", f"--uwo-ddof {BON['uwo_ddof']}"]
    return " ".join(args)


def bon_results():
    singles = expand("results/bon/seed{seed}.json", seed=RM_SEEDS)
    ensembles = expand("results/bon/ensemble_{agg}.json", agg=BON_AGGS)
    return [*singles, *ensembles]


def report_bon_targets():
    return ["results/report/bon.csv", "results/report/bon.png"]


# ---- the gold scorer of the over-optimisation study --------------------------
# gold.kind model: a gold RM (gold.model, or results/models/gold trained here)
# labels pairs of the policy's own replies (results/data/gold-labelled/, the
# proxies' trainset) and scores the best-of-n candidates; verifier: each
# domain's verifier does both (1.0 / 0.0).
GOLD = config["gold"]
GOLD_KIND = GOLD["kind"]
GOLD_TRAINED = "results/models/gold"
GOLD_SPLITS = sorted(GOLD["label"]["sizes"])


def gold_model():
    """The gold RM's folder or hub id; None when the verifiers are the gold."""
    if GOLD_KIND == "verifier":
        return None
    return GOLD["model"] if GOLD["model"] is not None else GOLD_TRAINED


def gold_model_input(wildcards=None):
    """The gold RM as an input: built here or a local folder; hub ids none."""
    model = gold_model()
    if model is None:
        return []
    return [model] if model == GOLD_TRAINED or _is_local(model) else []


def gold_model_arg(wildcards=None):
    """--gold-model of the stages that score with the gold (empty: verifiers)."""
    model = gold_model()
    return "" if model is None else f"--gold-model {shlex.quote(model)}"


def gold_name():
    """How reports name the gold: verifier, or the gold RM's folder / hub id."""
    return gold_model() or "verifier"


def gold_train_base_args(wildcards=None):
    """Where the gold RM trained here starts: scratch (tiny) or a base model."""
    base = GOLD["train"]["base"]
    if base is None and TINY:
        return "--tokenizer results/tokenizer"
    return f"--base {shlex.quote(base or config['models']['policy'])}"


def gold_train_base_input(wildcards):
    base = GOLD["train"]["base"]
    if base is None and TINY:
        return ["results/tokenizer"]
    base = base or config["models"]["policy"]
    return [base] if _is_local(base) else []


def gold_verifier_args(wildcards):
    """Verifier flags of the stages that score with the gold (label_gold,
    train_ppo), only when the verifiers are the gold."""
    if GOLD_KIND != "verifier":
        return ""
    return (
        f"--math-extraction {config['data']['math_extraction']}"
        f" --sandbox-backend {config['sandbox']['backend']}"
    )


def gold_labelled_targets():
    return expand(f"results/data/{GOLD_LABELLED}/{{split}}.jsonl", split=GOLD_SPLITS)


def summary_gold_data():
    """The gold-labelled pairs, for the summary page, when an RM learns them."""
    return gold_labelled_targets() if GOLD_LABELLED in RM_TRAINSETS else []


def summary_gold_model():
    """The gold RM, for the summary page, when it is trained here."""
    return [GOLD_TRAINED] if gold_model() == GOLD_TRAINED else []


def _check_gold():
    if GOLD_LABELLED in RM_TRAINSETS and "train" not in GOLD_SPLITS:
        raise ValueError(
            f"rm.trainsets lists {GOLD_LABELLED!r}, so gold.label.sizes needs a"
            f" 'train' split (has {GOLD_SPLITS})"
        )
    if GOLD_LABELLED in MIXTURES or GOLD_LABELLED in DOMAINS:
        raise ValueError(f"{GOLD_LABELLED!r} is the gold-labelled trainset's name")


_check_gold()


# ---- DogeRM: merge the general RM with each domain SFT LM ---------------------
MERGE = config["merge"]
MERGE_DOMAINS = list(MERGE["domains"])
MERGE_WEIGHTS = [f"{float(w):g}" for w in MERGE["weights"]]


def external_id(name):
    """Path-safe id of a model given by hub id or folder: ext-<slug>."""
    slug = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")
    return f"ext-{slug}"


# merge.rm_model / merge.lm_models name outside models (e.g. DogeRM's Llama-2
# pair) by hub id or folder; their ids map back to those names.
EXTERNAL_MODELS = {
    external_id(name): name
    for name in [MERGE["rm_model"], *MERGE["lm_models"].values()]
    if name is not None
}
MERGE_RM = (
    external_id(MERGE["rm_model"])
    if MERGE["rm_model"] is not None
    else f"rm-{MERGE['rm_trainset']}-seed{MERGE['rm_seed']}"
)


def merge_lm_id(domain):
    """The LM merged for a domain: its SFT LM, or merge.lm_models[domain]."""
    name = MERGE["lm_models"].get(domain)
    return external_id(name) if name is not None else f"sft-{domain}"


def _check_merge():
    if MERGE["rm_model"] is None and (
        MERGE["rm_trainset"] not in RM_TRAINSETS or MERGE["rm_seed"] not in RM_SEEDS
    ):
        raise ValueError(
            f"merge.rm_trainset/rm_seed name {MERGE_RM}, which is not among the"
            f" trained RMs {rm_model_ids()} (rm.trainsets x rm.seeds)"
        )
    missing = [d for d in MERGE_DOMAINS if d not in DOMAINS]
    missing += [d for d in MERGE["lm_models"] if d not in MERGE_DOMAINS]
    if missing:
        raise ValueError(
            f"merge.domains/lm_models name {missing}, which are not in"
            f" data.domains {DOMAINS} / merge.domains {MERGE_DOMAINS}"
        )


_check_merge()


wildcard_constraints:
    rm=r"rm-[a-z0-9-]+-seed\d+|ext-[a-z0-9.-]+",
    lm=r"sft-[a-z0-9-]+|ext-[a-z0-9.-]+",
    weight=r"[0-9]+(\.[0-9]+)?",


def merged_path(domain, weight):
    return f"results/models/merged/{MERGE_RM}__{merge_lm_id(domain)}/w{weight}"


def _merge_source(model_id):
    """Folder or hub id of a merge side (an rm-/sft- id or an ext- id)."""
    if model_id in EXTERNAL_MODELS:
        return EXTERNAL_MODELS[model_id]
    if model_id.startswith("sft-"):
        return f"results/models/sft/{model_id.removeprefix('sft-')}"
    return model_path(model_id)


def _local_input(source):
    """A merge side as an input: folders built here or on disk; hub ids none."""
    return [source] if _is_local(source) or source.startswith("results/") else []


def merge_rm_input(wildcards):
    return _local_input(_merge_source(wildcards.rm))


def merge_lm_input(wildcards):
    return _local_input(_merge_source(wildcards.lm))


def merge_sources_arg(wildcards):
    """--rm/--lm of merge_dogerm: folders built here, local folders or hub ids."""
    rm, lm = _merge_source(wildcards.rm), _merge_source(wildcards.lm)
    return f"--rm {shlex.quote(rm)} --lm {shlex.quote(lm)}"


def merge_weight_args(wildcards):
    """--lm-weight is the swept weight; --rm-weight is 1 - w unless configured."""
    lm_weight = float(wildcards.weight)
    rm_weight = MERGE["rm_weight"]
    if rm_weight is None:
        rm_weight = round(1.0 - lm_weight, 6)
    return f"--rm-weight {rm_weight} --lm-weight {lm_weight}"


def merged_model_ids():
    return expand(
        "merged-{domain}-w{weight}", domain=MERGE_DOMAINS, weight=MERGE_WEIGHTS
    )


def dogerm_evals():
    return expand(
        "results/eval/{model_id}/{benchmark}.json",
        model_id=merged_model_ids(),
        benchmark=list(BENCHMARKS),  # e.g. Auto-J pairs named in eval.benchmarks
    )


def dogerm_bon_gens():
    return expand("results/bon/gens/{domain}.jsonl", domain=MERGE["bon_domains"])


def dogerm_scores():
    if not MERGE["bon_domains"]:
        return []
    return [score_store(m) for m in merged_model_ids()]


# ---- scoring: one job per model scores all it is needed on -------------------
# Every seeded RM and merged model is evaluated on every benchmark; the BoN
# members are also scored on the candidates of bon.domains, the merges on those
# of merge.bon_domains. One score_model job per model does all of it in one
# load (results/scores/{model_id}.parquet); eval_rm, bon_* and the reports read
# that store without torch.
INPUT_SETTINGS = ("max_length", "truncation_side", "chat_template", "system_prompt")


def score_store(model_id):
    """The score store of a model: every score it gave, one file."""
    return f"results/scores/{model_id}.parquet"


def scored_gens_domains(model_id):
    """Domains whose best-of-n candidates a model is scored on (maybe none)."""
    domains = list(BON_DOMAINS) if model_id in bon_member_ids() else []
    if model_id in merged_model_ids():
        domains += [d for d in MERGE["bon_domains"] if d not in domains]
    return domains


def score_model_gens(wildcards):
    return expand(
        "results/bon/gens/{domain}.jsonl",
        domain=scored_gens_domains(wildcards.model_id),
    )


def _study_only_splits(model_id):
    """The test splits an RM that no rm.trainsets seed is (a transfer source of
    its own domain) is evaluated on: its transfer targets' and, as the active
    start, the active domains'; None for every other model."""
    if model_id in rm_model_ids():
        return None
    splits = [
        f"{t}-test"
        for s in TRANSFER_RMS
        if transfer_source_id(s) == model_id
        for t in TRANSFER_TARGETS
        if t != s
    ]
    if model_id == ACTIVE_START_ID:
        splits += [f"{d}-test" for d in ACTIVE_DOMAINS]
    return sorted(set(splits)) or None


def scored_benchmarks(model_id):
    """The benchmarks a model is scored on: its target's test split for the
    transfer and active-learning models (hundreds of them on a cluster), the
    splits it is evaluated on for a transfer source trained only as one,
    every benchmark for the others."""
    target = MODEL_TARGETS.get(model_id)
    if target is not None:
        return {f"{target}-test": BENCHMARKS[f"{target}-test"]}
    splits = _study_only_splits(model_id)
    if splits is not None:
        return {name: BENCHMARKS[name] for name in splits}
    return BENCHMARKS


def score_model_data(wildcards):
    """Local files of the benchmarks: a rebuilt test split rescores the model."""
    specs = scored_benchmarks(wildcards.model_id).values()
    return sorted({f for spec in specs for f in benchmark_files(spec)})


def score_model_templates(wildcards):
    """Chat templates given as files, of the settings this model is scored with."""
    files = chat_template_file("eval")
    if scored_gens_domains(wildcards.model_id):
        files += chat_template_file("bon/score")
    return files


def _settings_json(section, **extra):
    values = lookup(dpath=section, within=config)
    settings = {key: values[key] for key in INPUT_SETTINGS}
    return shlex.quote(json.dumps({**settings, **extra}, sort_keys=True))


def candidate_limit(model_id):
    """A merged model scores only the first max(merge.bon_ns) candidates of a
    prompt (all DogeRM's first-n best-of-n reads); BoN members score all."""
    if model_id in bon_member_ids():
        return {}
    return {"max_candidates": max(int(n) for n in MERGE["bon_ns"])}


def score_model_args(wildcards):
    """The inputs of a model's score_model job: benchmarks and their settings,
    and the candidate settings when it scores candidates (sorted: YAML order
    must not rerun it)."""
    args = [
        f"--benchmark {name} {shlex.quote(json.dumps(spec, sort_keys=True))}"
        for name, spec in sorted(scored_benchmarks(wildcards.model_id).items())
    ]
    args.append(f"--pair-settings {_settings_json('eval')}")
    if scored_gens_domains(wildcards.model_id):
        limit = candidate_limit(wildcards.model_id)
        args.append(f"--candidate-settings {_settings_json('bon/score', **limit)}")
    return " ".join(args)


def report_dogerm_targets():
    """The DogeRM report, and the merges' official RewardBench runs if enabled."""
    return [
        "results/report/dogerm.csv",
        "results/report/dogerm.png",
        *rewardbench_official_targets("merged"),
    ]


# ---- PPO -----------------------------------------------------------------------
# One run per objective and seed: single (the bon.trainset RM of that seed) or
# an ensemble objective over every rm.seeds member of bon.trainset.
PPO = config["ppo"]
PPO_OBJECTIVES = list(PPO["objectives"])
PPO_SEEDS = [int(s) for s in PPO["seeds"]]


wildcard_constraints:
    objective="|".join(re.escape(o) for o in PPO_OBJECTIVES),


def ppo_member_ids(wildcards):
    """The proxy RMs of a run: its seed's RM (single) or every seed's."""
    if wildcards.objective == "single":
        # checked here, not at parse time: other targets need no PPO proxies
        if int(wildcards.seed) not in RM_SEEDS:
            raise ValueError(
                f"PPO single seed{wildcards.seed}: the seed picks the proxy, and"
                f" rm.seeds {RM_SEEDS} has no seed {wildcards.seed} (ppo.seeds)"
            )
        return [f"rm-{BON['trainset']}-seed{wildcards.seed}"]
    if len(RM_SEEDS) < 2:
        raise ValueError(
            f"PPO {wildcards.objective}: an ensemble needs 2+ rm.seeds, got {RM_SEEDS}"
        )
    return bon_member_ids()


def ppo_member_models(wildcards):
    return [model_path(m) for m in ppo_member_ids(wildcards)]


def ppo_objective(wildcards):
    """train_ppo's --objective: single, mean, wco or uwo."""
    return wildcards.objective.removeprefix("ensemble_")


def ppo_evals():
    return expand(
        "results/ppo/{objective}/seed{seed}/eval.jsonl",
        objective=PPO_OBJECTIVES,
        seed=PPO_SEEDS,
    )


def report_ppo_targets():
    return [
        "results/report/ppo.csv",
        "results/report/ppo_summary.csv",
        "results/report/ppo.png",
    ]


# ---- ArmoRM --------------------------------------------------------------------
# Data sets: the multi-objective responses (ridge), the preference pairs
# (gating), the reference pairs (debiasing; when configured) and every domain's
# test split (evaluation); each embedded in armo.shards extraction jobs.
ARMO = config["armo"]
ARMO_SHARDS = int(ARMO["shards"])
ARMO_SOURCES = {
    "multi-objective": "multi_objective",
    "preference": "preference",
    "reference": "reference",
}
ARMO_SETS = {
    "multi-objective": "responses",
    "preference": "pairs",
    **({"reference": "pairs"} if ARMO["reference"] is not None else {}),
    **{d: "pairs" for d in DOMAINS},
}


def _armo_backbone():
    """The backbone's folder or hub id, and its path-safe id."""
    name = ARMO["backbone"]
    match = re.fullmatch(r"rm-(?P<trainset>.+)-seed(?P<seed>\d+)", name)
    if match:  # an RM of this study: train_rm builds it when ArmoRM is asked for
        return f"results/models/rm/{match['trainset']}/seed{match['seed']}", name
    if name.startswith("sft-") and name.removeprefix("sft-") in DOMAINS:
        return f"results/models/sft/{name.removeprefix('sft-')}", name
    return name, external_id(name)


ARMO_BACKBONE, ARMO_BACKBONE_ID = _armo_backbone()
ARMO_ID = f"armo-{ARMO_BACKBONE_ID}"
ARMO_MODEL = f"results/models/armo/{ARMO_BACKBONE_ID}"
# the BT RM on the same backbone, compared in the report: the backbone itself
# when it is an RM (one of ours, or a hub RM such as FsfairX-LLaMA3-RM);
# armo.bt_baseline false for a backbone that is not (an SFT model, a base LM)
if ARMO_BACKBONE_ID.startswith("ext-"):
    EXTERNAL_MODELS[ARMO_BACKBONE_ID] = ARMO_BACKBONE
ARMO_BT = (
    ARMO_BACKBONE_ID
    if ARMO["bt_baseline"] and not ARMO_BACKBONE_ID.startswith("sft-")
    else None
)


wildcard_constraints:
    armo_set="|".join(re.escape(s) for s in ARMO_SETS),


def armo_backbone_input(wildcards=None):
    """The backbone as an input when it is a folder (built here or on disk)."""
    return _local_input(ARMO_BACKBONE)


def armo_data_input(wildcards):
    """A data set's rows: a domain's split, else the set's ArmoRM data file."""
    if wildcards.armo_set in DOMAINS:
        return f"results/data/{wildcards.armo_set}/{wildcards.split}.jsonl"
    return f"results/armo/data/{wildcards.armo_set}/{wildcards.split}.jsonl"


def armo_kind(wildcards):
    return ARMO_SETS[wildcards.armo_set]


def armo_shards(armo_set, split):
    """Every extraction shard of one data set and split."""
    return expand(
        "results/armo/embeddings/{armo_set}/{split}/shard{i}-of-{n}.safetensors",
        armo_set=armo_set,
        split=split,
        i=range(ARMO_SHARDS),
        n=ARMO_SHARDS,
    )


def _armo_source(wildcards):
    return ARMO[ARMO_SOURCES[wildcards.armo_set]]


def armo_data_records(wildcards):
    """Inputs of a data set: our train records, or its local source file."""
    source = _armo_source(wildcards)
    if source is None:
        return expand("results/data/{domain}/train.jsonl", domain=DOMAINS)
    return [source["path"]] if "path" in source else []


def armo_data_args(wildcards, input):
    """build_armo_data's flags: --records (ours) or --source, and the labels."""
    source = _armo_source(wildcards)
    if source is None:
        args = ["--records", *map(shlex.quote, input.records)]
    else:
        args = ["--source", shlex.quote(json.dumps(source, sort_keys=True))]
    if wildcards.armo_set == "multi-objective":
        if ARMO["attributes"] is not None:
            args += ["--attributes", shlex.quote(json.dumps(ARMO["attributes"]))]
        args += ["--seed", str(ARMO["seed"])]
    return " ".join([f"--kind {ARMO_SETS[wildcards.armo_set]}", *args])


def armo_reference_shards():
    return armo_shards("reference", "train") if "reference" in ARMO_SETS else []


def armo_reference_arg(wildcards, input):
    refs = input.reference
    return f"--reference {' '.join(map(shlex.quote, refs))}" if refs else ""


def armo_test_shards():
    return {d: armo_shards(d, "test") for d in DOMAINS}


def armo_eval_args(wildcards, input):
    """--test DOMAIN SHARD... per domain, the BT RM's and the ArmoRM's evals."""
    args = []
    for domain in DOMAINS:
        shards = " ".join(armo_shards(domain, "test"))
        args.append(f"--test {domain} {shards}")
        args.append(f"--scored {domain} results/eval/{ARMO_ID}/{domain}-test.json")
        if ARMO_BT is not None:
            args.append(f"--bt {domain} results/eval/{ARMO_BT}/{domain}-test.json")
    if ARMO_BT is not None:
        args.append(f"--bt-model-id {ARMO_BT}")
    return " ".join(args)


def armo_evals():
    """The ArmoRM on every benchmark, through score_model and eval_rm."""
    return expand(
        "results/eval/{model_id}/{benchmark}.json",
        model_id=[ARMO_ID],
        benchmark=list(BENCHMARKS),
    )


def armo_bt_evals():
    if ARMO_BT is None:
        return []
    return expand(
        "results/eval/{model_id}/{domain}-test.json", model_id=[ARMO_BT], domain=DOMAINS
    )


def report_armo_targets():
    return ["results/report/armo.csv", "results/report/armo.png", *armo_evals()]


# ---- transfer across domains ---------------------------------------------------
# Runs: results/transfer/{source}_to_{target}/n{n}/seed{seed} (model id
# transfer-{source}-to-{target}-n{n}-seed{seed}); the ground truth is source
# "scratch" (the target's SFT model with a new head) on all pairs (n "all").
TRANSFER_SIZES = [int(n) for n in TRANSFER["sizes"]]
TRANSFER_SEEDS = [int(s) for s in TRANSFER["seeds"]]
SCRATCH = "scratch"


def transfer_source_id(source):
    """The model id of a source RM: ours, or the one transfer.source_models names."""
    name = TRANSFER["source_models"].get(source)
    if name is None:
        return f"rm-{source}-seed{TRANSFER['source_seed']}"
    EXTERNAL_MODELS[external_id(name)] = name
    return external_id(name)


def transfer_runs():
    """(source, target, n, seed) of every run, ground truths included."""
    runs = [
        (s, t, str(n), seed)
        for t in TRANSFER_TARGETS
        for s in TRANSFER_SOURCES
        if s != t
        for n in TRANSFER_SIZES
        for seed in TRANSFER_SEEDS
    ]
    # one ground truth per target (the first seed): the line the curves must reach
    runs += [(SCRATCH, t, "all", TRANSFER_SEEDS[0]) for t in TRANSFER_TARGETS]
    return runs


TRANSFER_MODELS = {
    f"transfer-{s}-to-{t}-n{n}-seed{seed}": f"results/transfer/{s}_to_{t}/n{n}/seed{seed}"
    for s, t, n, seed in transfer_runs()
}
MODEL_TARGETS = {
    f"transfer-{s}-to-{t}-n{n}-seed{seed}": t for s, t, n, seed in transfer_runs()
}


def transfer_base(wildcards):
    """Where a run starts: the source RM, or the target's SFT model (scratch)."""
    if wildcards.source == SCRATCH:
        name = TRANSFER["ground_truth_bases"].get(wildcards.target)
        return name or f"results/models/sft/{wildcards.target}"
    return model_path(transfer_source_id(wildcards.source))


def transfer_base_input(wildcards):
    return _local_input(transfer_base(wildcards))


def transfer_base_arg(wildcards):
    return f"--base {shlex.quote(transfer_base(wildcards))}"


def transfer_subset_args(wildcards):
    """--max-pairs n --subset-seed seed (all pairs for the ground truth)."""
    if wildcards.n == "all":
        return ""
    return f"--max-pairs {wildcards.n} --subset-seed {wildcards.seed}"


def lora_train_args(section):
    """train_rm's flags: the rm section, then LoRA and the section's overrides
    (argparse keeps the last value of a flag)."""
    base = cli_args("rm", exclude=("seeds", "trainsets", "mixtures"))
    return f"{base} --lora true --keep-adapter false {cli_args(section)}"


def transfer_evals():
    """Every run, zero-shot source and ground truth on its target's test split."""
    runs = [
        f"results/eval/{m}/{t}-test.json"
        for m, t in MODEL_TARGETS.items()
        if m.startswith("transfer-")
    ]
    zero = [
        f"results/eval/{transfer_source_id(s)}/{t}-test.json"
        for t in TRANSFER_TARGETS
        for s in TRANSFER_SOURCES
        if s != t
    ]
    return [*runs, *zero]


def transfer_report_args(wildcards):
    """report_transfer's --run / --zero-shot / --ground-truth arguments."""
    args = []
    for s, t, n, seed in transfer_runs():
        path = f"results/eval/transfer-{s}-to-{t}-n{n}-seed{seed}/{t}-test.json"
        if s == SCRATCH:  # N_T: the pairs it trained on (its metrics.json)
            metrics = f"results/transfer/{s}_to_{t}/n{n}/seed{seed}/metrics.json"
            args.append(f"--ground-truth {t} {metrics} {path}")
        else:
            args.append(f"--run {s} {t} {n} {seed} {path}")
    for t in TRANSFER_TARGETS:
        for s in TRANSFER_SOURCES:
            if s != t:
                zero = f"results/eval/{transfer_source_id(s)}/{t}-test.json"
                args.append(f"--zero-shot {s} {t} {zero}")
    return " ".join(args)


def report_transfer_targets():
    if not TRANSFER_TARGETS:
        return []
    return ["results/report/transfer.csv", "results/report/transfer.png"]


# ---- active learning -------------------------------------------------------------
# results/active/{domain}/{strategy}/seed{seed}/iter{i}/: selected.jsonl,
# rest.jsonl (the next pool), selection.json, model/ (model id
# active-{domain}-{strategy}-seed{seed}-iter{i}). Iteration 0 is the start RM.
ACTIVE = config["active"]
ACTIVE_ITERS = list(range(1, int(ACTIVE["iterations"]) + 1))
ACTIVE_START = ACTIVE["start"]


def _active_start():
    """The start RM's model id (ours, or an external one registered here)."""
    if re.fullmatch(r"rm-.+-seed\d+", ACTIVE_START):
        return ACTIVE_START
    EXTERNAL_MODELS[external_id(ACTIVE_START)] = ACTIVE_START
    return external_id(ACTIVE_START)


ACTIVE_START_ID = _active_start()


ACTIVE_DOMAINS = [d for d in ACTIVE["domains"] if d in DOMAINS]


def active_dir(domain, strategy, seed, i):
    return f"results/active/{domain}/{strategy}/seed{seed}/iter{i}"


ACTIVE_RUNS = [
    (d, st, seed, i)
    for d in ACTIVE_DOMAINS
    for st in ACTIVE["strategies"]
    for seed in ACTIVE["seeds"]
    for i in ACTIVE_ITERS
]
ACTIVE_MODELS = {
    f"active-{d}-{st}-seed{seed}-iter{i}": f"{active_dir(d, st, seed, i)}/model"
    for d, st, seed, i in ACTIVE_RUNS
}
MODEL_TARGETS.update(
    {f"active-{d}-{st}-seed{seed}-iter{i}": d for d, st, seed, i in ACTIVE_RUNS}
)


wildcard_constraints:
    strategy="uncertainty|random",
    iteration=r"[1-9]\d*",


def _previous_model(w):
    """The RM of the iteration before (iteration 0: the start RM)."""
    i = int(w.iteration)
    if i == 1:
        return model_path(ACTIVE_START_ID)
    return f"{active_dir(w.domain, w.strategy, w.seed, i - 1)}/model"


def active_pool_input(w):
    i = int(w.iteration)
    if i == 1:
        return f"results/data/{w.domain}/train.jsonl"
    return f"{active_dir(w.domain, w.strategy, w.seed, i - 1)}/rest.jsonl"


def active_select_model_input(w):
    return _local_input(_previous_model(w)) if w.strategy == "uncertainty" else []


def active_select_model_arg(w):
    if w.strategy != "uncertainty":
        return ""
    return f"--model {shlex.quote(_previous_model(w))}"


def active_train_pairs(w):
    """incremental: the new pairs; cumulative: every pair selected so far."""
    i = int(w.iteration)
    iters = [i] if ACTIVE["mode"] == "incremental" else range(1, i + 1)
    return [
        f"{active_dir(w.domain, w.strategy, w.seed, j)}/selected.jsonl" for j in iters
    ]


def _active_base(w):
    """incremental: the current RM; cumulative: the start RM each time."""
    if ACTIVE["mode"] == "incremental":
        return _previous_model(w)
    return model_path(ACTIVE_START_ID)


def active_train_base_input(w):
    return _local_input(_active_base(w))


def active_train_base_arg(w):
    return f"--base {shlex.quote(_active_base(w))}"


def active_report_args(wildcards):
    """report_active's --run and --start arguments."""
    args = [
        f"--start {d} results/eval/{ACTIVE_START_ID}/{d}-test.json"
        for d in ACTIVE_DOMAINS
    ]
    for d, st, seed, i in ACTIVE_RUNS:
        path = f"results/eval/active-{d}-{st}-seed{seed}-iter{i}/{d}-test.json"
        n_labelled = i * int(ACTIVE["k"])
        args.append(f"--run {d} {st} {seed} {i} {n_labelled} {path}")
    return " ".join(args)


def active_evals():
    runs = [
        f"results/eval/active-{d}-{st}-seed{seed}-iter{i}/{d}-test.json"
        for d, st, seed, i in ACTIVE_RUNS
    ]
    start = [f"results/eval/{ACTIVE_START_ID}/{d}-test.json" for d in ACTIVE_DOMAINS]
    return [*start, *runs]


def report_active_targets():
    if not ACTIVE_DOMAINS:
        return []
    return ["results/report/active.csv", "results/report/active.png"]
