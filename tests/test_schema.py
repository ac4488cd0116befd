import copy
from dataclasses import fields

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from pipelines.build_prefs import BuildPrefsConfig
from pipelines.common.modeling import TinyArchFields
from pipelines.common.ppo.config import PPOConfig
from pipelines.common.scoring import InputSettings, ScorerConfig
from pipelines.eval_rewardbench import EvalRewardBenchConfig
from pipelines.eval_rm import EvalConfig
from pipelines.generate_candidates import GenerateConfig
from pipelines.label_gold import LabelGoldConfig
from pipelines.train_rm import TrainRMConfig
from pipelines.train_sft import TrainSFTConfig
from pipelines.train_tokenizer import TrainTokenizerConfig

from .conftest import ROOT, TINY_CONFIG

TINY_ARCH = {f.name for f in fields(TinyArchFields)}

SCHEMA = str(ROOT / "workflow_config.schema.yaml")


def load(path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [ROOT / "workflow_config.yaml", TINY_CONFIG])
def test_configs_validate(path):
    validate(load(path), SCHEMA)


def test_defaults_fill_an_empty_config():
    cfg = {}
    validate(cfg, SCHEMA)
    assert cfg["preset"] == "tiny"
    assert cfg["data"]["domains"] == ["general", "math", "code"]
    assert cfg["data"]["on_invalid"] == "error"


def test_unknown_key_fails_naming_it():
    cfg = copy.deepcopy(load(TINY_CONFIG))
    cfg["data"]["sedd"] = 1
    with pytest.raises(WorkflowError, match="sedd"):
        validate(cfg, SCHEMA)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("politeness_rate", 1.5),
        ("seed", "zero"),
        ("on_invalid", "ignore"),
        ("domains", ["Math"]),
        ("sources", {"math": {"path": "x.jsonl", "colour": "red"}}),
    ],
)
def test_bad_values_fail(key, value):
    cfg = copy.deepcopy(load(TINY_CONFIG))
    cfg["data"][key] = value
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA)


@pytest.mark.parametrize(
    ("path", "value", "ok"),
    [
        ("rm/over_length", "drop", True),
        ("rm/over_length", "cut", False),
        ("rm/system_prompt", "", True),  # explicitly none
        ("eval/system_prompt", 3, False),
        ("sft/chat_template", "{{ messages }}", True),
        ("bon/score/chat_template", ["x"], False),
        ("bon/generate/system_prompt", None, True),
    ],
)
def test_chat_format_and_over_length_keys(path, value, ok):
    cfg = copy.deepcopy(load(TINY_CONFIG))
    *sections, key = path.split("/")
    node = cfg
    for name in sections:
        node = node.setdefault(name, {})
    node[key] = value
    if ok:
        validate(cfg, SCHEMA)
    else:
        with pytest.raises(WorkflowError, match=key):
            validate(cfg, SCHEMA)


@pytest.mark.parametrize(
    ("section", "cls", "not_in_schema"),
    [
        ("data", BuildPrefsConfig, {"source", "workers"}),  # data.sources; threads
        ("tokenizer", TrainTokenizerConfig, set()),
        ("sft", TrainSFTConfig, set()),
        # the shape of a model from scratch and clean_chosen belong to the gold
        # RM (gold.train, rule train_gold), never to the seeded RMs
        ("rm", TrainRMConfig, {*TINY_ARCH, "clean_chosen"}),
        ("eval", EvalConfig, set()),
        # gold_model: from the gold section (gold.kind, gold.model)
        ("bon/generate", GenerateConfig, {"gold_model"}),
        # max_candidates: the rules set it for DogeRM merged models
        ("bon/score", InputSettings, {"max_candidates"}),
        ("gold/label", LabelGoldConfig, {"workers"}),  # workers: threads
        ("score", ScorerConfig, set()),
        ("ppo/train", PPOConfig, {"workers"}),  # workers: the verifier's threads
        # python: not science; xstest_weights: one key for both evaluators,
        # eval.xstest_weights, which the eval_rewardbench rule passes
        ("eval_rewardbench", EvalRewardBenchConfig, {"python", "xstest_weights"}),
    ],
)
def test_dataclass_defaults_equal_schema_defaults(section, cls, not_in_schema):
    props = yaml.safe_load(open(SCHEMA))
    for key in section.split("/"):
        props = props["properties"][key]
    props = props["properties"]
    cfg = cls()
    names = {f.name for f in fields(cls)} - not_in_schema
    for name in names:
        assert name in props, f"{section}.{name} missing from the schema"
        value = getattr(cfg, name)
        value = list(value) if isinstance(value, tuple) else value  # YAML lists
        assert props[name]["default"] == value, f"{section}.{name}"
    # every schema key of the section is a field (or a workflow-level key)
    workflow_keys = {
        "domains",
        "sources",
        "seeds",
        "trainsets",
        "mixtures",
        "benchmarks",
        "enabled",
        "models",
        "seed",  # gold.label.seed: the stage's --seed
    }
    assert set(props) - names - workflow_keys == set()
