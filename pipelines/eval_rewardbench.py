r"""Run the official RewardBench package on one reward model and convert its results.

    python -m pipelines.eval_rewardbench --model results/models/rm/math/seed0 \
        --model-id rm-math-seed0 \
        --out results/eval/rm-math-seed0/rewardbench-official.json

The official ``rewardbench`` package (allenai/reward-bench on PyPI) runs in a
subprocess, ``python -m rewardbench.rewardbench`` (what its ``rewardbench``
console script calls), so this process never imports it and it keeps its own
pins (envs/rewardbench.yaml: transformers==4.51.0). The module itself needs
only the standard library, so it runs in that env. The package's log goes to
ours line by line.

The run happens in a temporary folder beside ``out``, because the package
derives its output paths by string concatenation from ``--model``
(``output_dir + model + ".json"``, ``os.path.join(output_dir, model +
"_outputs.jsonl")``): an absolute local path would send the scores next to the
model. A local model is therefore staged there as ``model/`` (links to its
files) and passed as ``--model model``; a hub id is passed as is. Staging also
adds the transformers 4.x spellings of config keys that transformers 5 renamed
(``rope_parameters`` -> ``rope_theta``/``rotary_pct``/``rope_scaling``,
``dtype`` -> ``torch_dtype``; without them 4.51 silently falls back to default
RoPE settings) and rewrites a transformers 5 ``TokenizersBackend`` tokenizer
config as ``PreTrainedTokenizerFast`` (4.51 cannot load the former). What was
changed is recorded under ``staged``.

Only the package's core-set path (``--dataset allenai/reward-bench``, split
``filtered``, hard-coded in rewardbench/utils.py ``load_eval_dataset``) reports
per-subset results, so that is the path this stage runs. ``dataset`` is the hub
id, or a local copy in the same schema (columns prompt, chosen, rejected,
subset, id): a JSON/JSONL/Parquet file or a folder laid out like the hub repo
(``data/{split}-*.parquet``). A local copy is linked into the run folder as
``allenai/reward-bench``, which ``datasets.load_dataset`` resolves to the local
folder before the hub, so the official code path runs unchanged, offline.

The output is the eval JSON of :mod:`pipelines.eval_rm` (readable by
:mod:`pipelines.report_eval`): ``subsets`` (n, n_correct, accuracy per
subset), the four ``sections`` weighted as RewardBench weights them
(:mod:`pipelines.common.rewardbench`, xstest corrected as in rewardbench 0.1.4
constants.py), ``overall`` and ``score`` (the mean of the four sections), per
pair scores, plus ``package_version``, ``command`` and the package's own JSON
under ``official``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.common import rewardbench
from pipelines.common.cli import add_dataclass_args, dataclass_from_args, field_help
from pipelines.common.io import write_json
from pipelines.common.logs import log_run_header, setup_logging

logger = logging.getLogger(__name__)

BENCHMARK_NAME = "rewardbench-official"
CORE_DATASET = "allenai/reward-bench"  # rewardbench/utils.py CORE_EVAL_SET
CORE_SPLIT = "filtered"  # rewardbench/utils.py load_eval_dataset, hard-coded
PACKAGE = "rewardbench"
ENTRY_MODULE = "rewardbench.rewardbench"  # console script rewardbench -> main()
OUTPUT_DIR = "rewardbench-out/"  # relative to the run folder; trailing / needed
STAGED_MODEL = "model"
STAGED_TOKENIZER = "tokenizer"
# rewardbench 0.1.4 constants.py EXAMPLE_COUNTS: xstest weights as corrected.
XSTEST_WEIGHTS = "corrected"
TORCH_DTYPES = ("float16", "bfloat16", "float32", "float64")  # Args.torch_dtype
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
PROBED_PACKAGES = (PACKAGE, "transformers", "torch", "datasets", "accelerate")
# Flags this stage sets itself, or that publish, log to W&B or change what
# the outputs mean (--ref_model switches to DPO scoring).
MANAGED_FLAGS = frozenset(
    {
        "--model",
        "--tokenizer",
        "--dataset",
        "--split",
        "--output_dir",
        "--load_json",
        "--ref_model",
        "--push_results_to_hub",
        "--upload_model_metadata_to_hf",
        "--hf_entity",
        "--hf_name",
        "--wandb_run",
    }
)
PROGRESS = re.compile(r"\d+%\|")  # tqdm bars go to DEBUG
CUDA_HINT = (
    "the package's default pipeline moves inputs to 'cuda'"
    ' (rewardbench/models/pipeline.py RewardBenchPipeline.__call__: .to("cuda")),'
    " so it needs a GPU"
)


class RewardBenchResultError(ValueError):
    """The package's result files are missing, malformed or incomplete."""


@dataclass(frozen=True, kw_only=True)
class EvalRewardBenchConfig:
    """Knobs of the official RewardBench run (YAML section ``eval_rewardbench``)."""

    dataset: str = field_help(
        "hub id allenai/reward-bench (rewardbench.rewardbench.Args default) or a"
        " local copy in its schema: a JSON/JSONL/Parquet file or a folder laid out"
        " like the hub repo",
        default=CORE_DATASET,
    )
    split: str = field_help(
        "split of a local folder to read (data/{split}-*); the hub set is always"
        " read as 'filtered' (hard-coded in rewardbench/utils.py)",
        default=CORE_SPLIT,
    )
    batch_size: int = field_help(
        "--batch_size: pairs per step (Args default 8)", default=8
    )
    max_length: int = field_help(
        "--max_length: only applied with force_truncation (Args default 512)",
        default=512,
    )
    torch_dtype: str = field_help(
        "--torch_dtype; bfloat16 on GPU (the package's float16 default loads"
        " non-Llama-3 models in 8 bit)",
        default="bfloat16",
    )
    not_quantized: bool = field_help(
        "--not_quantized: never load in 8 bit with bitsandbytes", default=True
    )
    force_truncation: bool = field_help(
        "--force_truncation: cut long inputs on the left at max_length (Args"
        " default False: a too-long input fails)",
        default=False,
    )
    attn_implementation: str | None = field_help(
        "--attn_implementation: eager, sdpa or flash_attention_2; None:"
        " transformers' default",
        default=None,
    )
    chat_template: str | None = field_help(
        "--chat_template: a FastChat template name, used only when the tokenizer"
        " has no chat template",
        default=None,
    )
    tokenizer: str | None = field_help(
        "tokenizer folder or hub id; None: the model's", default=None
    )
    trust_remote_code: bool = field_help(
        "--trust_remote_code: run model code from the hub", default=False
    )
    extra_args: tuple[str, ...] = field_help(
        'further rewardbench flags as a JSON list, e.g. \'["--revision", "v1"]\'',
        default=(),
    )
    python: str | None = field_help(
        "interpreter whose env has rewardbench; None: this one (the rule's conda"
        " env). Not science: keep it out of the YAML schema",
        default=None,
    )

    def __post_init__(self) -> None:
        """Reject values the package would reject or silently ignore."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.torch_dtype not in TORCH_DTYPES:
            raise ValueError(
                f"torch_dtype must be one of {TORCH_DTYPES}, got {self.torch_dtype!r}"
            )
        if (
            self.attn_implementation is not None
            and self.attn_implementation not in ATTN_IMPLEMENTATIONS
        ):
            raise ValueError(
                f"attn_implementation must be None or one of {ATTN_IMPLEMENTATIONS},"
                f" got {self.attn_implementation!r}"
            )
        if self.dataset == CORE_DATASET and self.split != CORE_SPLIT:
            raise ValueError(
                f"split {self.split!r}: the package reads {CORE_DATASET} as split"
                f" {CORE_SPLIT!r} only (rewardbench/utils.py load_eval_dataset);"
                " pass a local copy to read another split"
            )
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        for arg in self.extra_args:
            flag = _flag_name(arg)
            if flag in MANAGED_FLAGS:
                raise ValueError(
                    f"extra_args: {arg} is set by this stage or not supported here"
                )


def _flag_name(arg: str) -> str:
    """``--output-dir=x`` -> ``--output_dir`` (the package takes both spellings)."""
    if not arg.startswith("--"):
        return arg
    return "--" + arg[2:].split("=", 1)[0].replace("-", "_")


# ----------------------------------------------------------------- staging
def legacy_model_config(conf: Mapping[str, object]) -> tuple[dict, list[str]]:
    """Add the transformers 4.x keys for the ones transformers 5 renamed.

    Transformers 5 writes RoPE settings only under ``rope_parameters`` and the
    dtype as ``dtype``; 4.51 reads ``rope_theta``, ``rope_scaling``,
    ``partial_rotary_factor`` (GPT-NeoX: ``rotary_pct``, ``rotary_emb_base``)
    and ``torch_dtype``, and falls back to defaults when they are absent.
    Existing keys are kept.

    Args:
        conf: a model's ``config.json`` content.

    Returns:
        ``(config, added_keys)``; ``added_keys`` is empty when nothing changed.

    Raises:
        ValueError: on per-layer-type ``rope_parameters`` (no 4.x spelling).
    """
    out = dict(conf)
    added: list[str] = []

    def put(key: str, value: object) -> None:
        if out.get(key) is None and value is not None:
            out[key] = value
            added.append(key)

    if "dtype" in out:
        put("torch_dtype", out["dtype"])
    rope = out.get("rope_parameters")
    if isinstance(rope, Mapping) and rope:
        if not ({"rope_theta", "rope_type"} & set(rope)):
            raise ValueError(
                "config.json rope_parameters is per layer type"
                f" ({sorted(rope)}); transformers 4.51 cannot read it"
            )
        theta = rope.get("rope_theta")
        factor = rope.get("partial_rotary_factor")
        put("rope_theta", theta)
        put("partial_rotary_factor", factor)
        if out.get("model_type") == "gpt_neox":
            put("rotary_pct", factor)
            put("rotary_emb_base", theta)
        if rope.get("rope_type", "default") != "default":
            skip = {"rope_theta", "partial_rotary_factor"}
            put("rope_scaling", {k: v for k, v in rope.items() if k not in skip})
    return out, added


def legacy_tokenizer_config(conf: Mapping[str, object]) -> tuple[dict, list[str]]:
    """Rewrite a transformers 5 tokenizer config so that transformers 4.51 loads it.

    ``TokenizersBackend`` (the generic class transformers 5 saves for a
    ``tokenizer.json``) becomes ``PreTrainedTokenizerFast`` with model inputs
    ``input_ids``/``attention_mask`` (else 4.51 adds ``token_type_ids``, which
    decoder RMs reject); a list ``extra_special_tokens`` becomes
    ``additional_special_tokens``; ``backend`` is dropped.

    Args:
        conf: a tokenizer's ``tokenizer_config.json`` content.

    Returns:
        ``(config, changed_keys)``; ``changed_keys`` is empty when nothing changed.
    """
    out = dict(conf)
    changed: list[str] = []
    if out.get("tokenizer_class") == "TokenizersBackend":
        out["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed.append("tokenizer_class")
        if "model_input_names" not in out:
            out["model_input_names"] = ["input_ids", "attention_mask"]
            changed.append("model_input_names")
    if "backend" in out:
        del out["backend"]
        changed.append("backend")
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        del out["extra_special_tokens"]
        known = list(out.get("additional_special_tokens") or [])
        out["additional_special_tokens"] = known + [t for t in extra if t not in known]
        changed.append("extra_special_tokens")
    return out, changed


CONVERTERS = {
    "config.json": legacy_model_config,
    "tokenizer_config.json": legacy_tokenizer_config,
}


def stage_folder(src: Path, dst: Path) -> dict[str, list[str]]:
    """Mirror a model or tokenizer folder as links, converting its configs.

    Args:
        src: the saved folder.
        dst: the folder to create (must not exist).

    Returns:
        ``{file name: changed keys}`` for the configs rewritten (others linked).
    """
    dst.mkdir(parents=True)
    changes: dict[str, list[str]] = {}
    for entry in sorted(Path(src).iterdir()):
        target = dst / entry.name
        convert = CONVERTERS.get(entry.name)
        if convert is not None and entry.is_file():
            new, changed = convert(json.loads(entry.read_text(encoding="utf-8")))
            if changed:
                target.write_text(json.dumps(new, indent=2), encoding="utf-8")
                changes[entry.name] = changed
                logger.warning(
                    "%s: rewrote %s for transformers 4.x", entry, ", ".join(changed)
                )
                continue
        target.symlink_to(entry.resolve())
    return changes


def local_split_files(dataset: Path, split: str) -> list[Path]:
    """The data files of ``split`` in a local copy of the dataset.

    Args:
        dataset: a JSON/JSONL/Parquet file (the whole split) or a folder with
            ``data/{split}-*`` (the hub layout) or ``{split}.*`` files.
        split: the split to read from a folder.

    Returns:
        The files, sorted, all of one format.

    Raises:
        FileNotFoundError: when no file of the split is found.
        ValueError: on an unsupported or mixed format.
    """
    if dataset.is_file():
        files = [dataset]
    else:
        files = sorted((dataset / "data").glob(f"{split}-*"))
        files = files or sorted(dataset.glob(f"{split}.*"))
        files = [p for p in files if p.suffix in DATA_SUFFIXES]
    if not files:
        raise FileNotFoundError(
            f"{dataset}: no data/{split}-*  or {split}.* file with a suffix in"
            f" {DATA_SUFFIXES}"
        )
    suffixes = {p.suffix for p in files}
    if len(suffixes) != 1 or not suffixes <= set(DATA_SUFFIXES):
        raise ValueError(f"{dataset}: data files must share one of {DATA_SUFFIXES}")
    return files


def stage_dataset(dataset: Path, split: str, run_dir: Path) -> dict[str, str]:
    """Link a local copy as ``allenai/reward-bench`` in ``run_dir`` (split filtered).

    Returns:
        ``{link relative to run_dir: source}``.
    """
    files = local_split_files(dataset, split)
    data = run_dir / CORE_DATASET / "data"
    data.mkdir(parents=True)
    links = {}
    for i, src in enumerate(files):
        name = f"{CORE_SPLIT}-{i:05d}-of-{len(files):05d}{src.suffix}"
        (data / name).symlink_to(src.resolve())
        links[f"{CORE_DATASET}/data/{name}"] = str(src.resolve())
    return links


# ----------------------------------------------------------------- command
def build_command(
    python: str, model_arg: str, tokenizer_arg: str | None, cfg: EvalRewardBenchConfig
) -> list[str]:
    """The argv of the official run (relative paths resolve in the run folder).

    Args:
        python: the interpreter with rewardbench installed.
        model_arg: ``model`` (staged local folder) or a hub id.
        tokenizer_arg: ``--tokenizer`` value, or None for the model's.
        cfg: the stage config.

    Returns:
        ``[python, "-m", "rewardbench.rewardbench", "--model", ...]``.
    """
    cmd = [python, "-m", ENTRY_MODULE, "--model", model_arg]
    if tokenizer_arg is not None:
        cmd += ["--tokenizer", tokenizer_arg]
    cmd += [
        "--dataset",
        CORE_DATASET,
        "--batch_size",
        str(cfg.batch_size),
        "--max_length",
        str(cfg.max_length),
        "--torch_dtype",
        cfg.torch_dtype,
        "--output_dir",
        OUTPUT_DIR,
    ]
    if cfg.chat_template is not None:
        cmd += ["--chat_template", cfg.chat_template]
    if cfg.attn_implementation is not None:
        cmd += ["--attn_implementation", cfg.attn_implementation]
    for flag in ("not_quantized", "force_truncation", "trust_remote_code"):
        if getattr(cfg, flag):
            cmd.append(f"--{flag}")
    return cmd + list(cfg.extra_args)


def official_paths(run_dir: Path, model_arg: str) -> tuple[Path, Path]:
    """Where the package writes its results JSON and its per-pair JSONL.

    Mirrors rewardbench/rewardbench.py: ``args.output_dir + args.model +
    ".json"`` and ``os.path.join(args.output_dir, f"{args.model}_outputs.jsonl")``.
    """
    return (
        run_dir / (OUTPUT_DIR + model_arg + ".json"),
        run_dir / os.path.join(OUTPUT_DIR, f"{model_arg}_outputs.jsonl"),
    )


def probe_versions(python: str) -> dict[str, str]:
    """Versions of rewardbench and its main dependencies in ``python``'s env.

    Raises:
        RuntimeError: when ``python`` cannot run or has no rewardbench.
    """
    code = (
        "import json, importlib.metadata as m\n"
        "def v(p):\n"
        "    try:\n"
        "        return m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        return 'absent'\n"
        f"print(json.dumps({{p: v(p) for p in {list(PROBED_PACKAGES)!r}}}))"
    )
    try:
        res = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True
        )
        versions = json.loads(res.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError) as exc:
        raise RuntimeError(
            f"cannot query package versions with {python}: {exc}"
        ) from exc
    if versions[PACKAGE] == "absent":
        raise RuntimeError(
            f"{python} has no {PACKAGE} package: run in the envs/rewardbench.yaml"
            " conda env, or point --python at an interpreter that has it"
        )
    return versions


def run_logged(cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
    """Run ``cmd``, sending its output to our log; raise on failure.

    Raises:
        RuntimeError: on a non-zero exit, with the last lines of its output.
    """
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            level = logging.DEBUG if PROGRESS.search(line) else logging.INFO
            logger.log(level, "[rewardbench] %s", line)
    if proc.returncode != 0:
        text = "\n".join(tail)
        hint = f"\n({CUDA_HINT})" if "CUDA" in text else ""
        raise RuntimeError(
            f"rewardbench exited with code {proc.returncode}; last lines:\n{text}{hint}"
        )


# ----------------------------------------------------------------- results
def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )


def read_official(results_path: Path, outputs_path: Path) -> tuple[dict, list[dict]]:
    """Read the package's results JSON and per-pair JSONL.

    Args:
        results_path: ``{output_dir}{model}.json``.
        outputs_path: ``{output_dir}/{model}_outputs.jsonl``.

    Returns:
        ``(results, rows)``.

    Raises:
        RewardBenchResultError: naming the file (and line) on a missing or
            unreadable file.
    """
    for path in (results_path, outputs_path):
        if not path.is_file():
            raise RewardBenchResultError(
                f"{path}: missing; rewardbench wrote no such file (see its log)"
            )
    try:
        official = json.loads(results_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RewardBenchResultError(f"{results_path}: not JSON ({exc})") from None
    if not isinstance(official, dict):
        raise RewardBenchResultError(f"{results_path}: not a JSON object")
    rows = []
    with open(outputs_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise RewardBenchResultError(
                    f"{outputs_path}:{lineno}: not JSON ({exc})"
                ) from None
            if not isinstance(row, dict):
                raise RewardBenchResultError(
                    f"{outputs_path}:{lineno}: not a JSON object"
                )
            rows.append(row)
    return official, rows


def convert_results(
    official: Mapping[str, object],
    rows: Sequence[Mapping[str, object]],
    *,
    results_path: Path,
    outputs_path: Path,
) -> dict:
    """Per-subset, section and overall scores from the package's results.

    Per-subset counts come from the per-pair rows (``results`` is 1 when
    ``scores_chosen > scores_rejected``) and must agree with the package's
    ``extra_results`` accuracies, ``num_prompts`` and ``accuracy``; all 23 core
    subsets must be present. Sections are computed from ``extra_results``
    with :func:`pipelines.common.rewardbench.summarize` (the package only logs
    its ``calculate_scores_per_section``).

    Args:
        official: the results JSON.
        rows: the per-pair JSONL rows.
        results_path: named in errors.
        outputs_path: named in errors.

    Returns:
        ``n_pairs``, ``accuracy``, ``subsets``, ``sections``, ``overall``,
        ``score`` and ``pairs``.

    Raises:
        RewardBenchResultError: naming the file and field that is missing,
            malformed or inconsistent.
    """
    for field in ("accuracy", "num_prompts"):
        if not _number(official.get(field)):
            raise RewardBenchResultError(
                f"{results_path}: field {field!r} missing or not a number"
                f" (got {official.get(field)!r})"
            )
    extra = official.get("extra_results")
    if not isinstance(extra, Mapping) or not extra:
        raise RewardBenchResultError(
            f"{results_path}: field 'extra_results' (per-subset accuracies) is"
            f" {extra!r}; the package fills it only for --dataset {CORE_DATASET}"
        )
    for subset, acc in extra.items():
        if not _number(acc) or not 0.0 <= float(acc) <= 1.0:
            raise RewardBenchResultError(
                f"{results_path}: field 'extra_results.{subset}' is {acc!r},"
                " not an accuracy"
            )
    core = [s for names in rewardbench.SECTIONS.values() for s in names]
    missing = [s for s in core if s not in extra]
    if missing:
        raise RewardBenchResultError(
            f"{results_path}: field 'extra_results' lacks {len(missing)} of the"
            f" {len(core)} RewardBench subsets: {', '.join(missing)}"
        )
    counts: dict[str, list[int]] = {}
    pairs = []
    for lineno, row in enumerate(rows, 1):
        for field in ("results", "subset", "scores_chosen", "scores_rejected"):
            if field not in row:
                raise RewardBenchResultError(
                    f"{outputs_path}:{lineno}: field {field!r} missing"
                )
        result, subset = row["results"], row["subset"]
        if result not in (0, 1) or isinstance(result, bool):
            raise RewardBenchResultError(
                f"{outputs_path}:{lineno}: field 'results' is {result!r}, not 0 or 1"
            )
        if not isinstance(subset, str):
            raise RewardBenchResultError(
                f"{outputs_path}:{lineno}: field 'subset' is {subset!r}, not a name"
            )
        got = counts.setdefault(subset, [0, 0])
        got[0] += int(result)
        got[1] += 1
        pairs.append(
            {
                "id": row.get("id", lineno - 1),
                "subset": subset,
                "chosen": row["scores_chosen"],
                "rejected": row["scores_rejected"],
            }
        )
    if len(rows) != official["num_prompts"]:
        raise RewardBenchResultError(
            f"{outputs_path}: {len(rows)} pairs but {results_path} field"
            f" 'num_prompts' is {official['num_prompts']}"
        )
    if set(counts) != set(extra):
        raise RewardBenchResultError(
            f"{outputs_path}: subsets {sorted(counts)} differ from {results_path}"
            f" field 'extra_results' {sorted(extra)}"
        )
    subsets: dict[str, dict[str, float | int]] = {}
    for subset in sorted(counts):
        correct, n = counts[subset]
        if not math.isclose(correct / n, float(extra[subset]), abs_tol=1e-9):
            raise RewardBenchResultError(
                f"{outputs_path}: subset {subset} has {correct}/{n} correct pairs"
                f" but {results_path} field 'extra_results.{subset}' is"
                f" {extra[subset]}"
            )
        subsets[subset] = {"n": n, "n_correct": correct, "accuracy": correct / n}
    n_correct = sum(c for c, _ in counts.values())
    if not math.isclose(
        n_correct / len(rows), float(official["accuracy"]), abs_tol=1e-9
    ):
        raise RewardBenchResultError(
            f"{outputs_path}: {n_correct}/{len(rows)} correct pairs but"
            f" {results_path} field 'accuracy' is {official['accuracy']}"
        )
    unknown = sorted(s for s in counts if rewardbench.section_of(s) is None)
    if unknown:
        logger.warning("subsets outside the four sections (not scored): %s", unknown)
    summary = rewardbench.summarize(
        {s: float(extra[s]) for s in extra}, xstest_weights=XSTEST_WEIGHTS
    )
    sections = {
        name: {
            "n": sum(subsets[s]["n"] for s in names if s in subsets),
            "accuracy": summary["sections"][name],
        }
        for name, names in rewardbench.SECTIONS.items()
    }
    overall = {"pooled": float(official["accuracy"]), **summary["overall"]}
    return {
        "n_pairs": len(rows),
        "accuracy": float(official["accuracy"]),
        "subsets": subsets,
        "sections": sections,
        "overall": overall,
        "score": summary["overall"]["sections_mean"],
        "pairs": pairs,
    }


# ----------------------------------------------------------------- the stage
def eval_rewardbench(
    model: str, out: Path, *, model_id: str, cfg: EvalRewardBenchConfig
) -> dict:
    """Run the official RewardBench package on ``model`` and write the eval JSON.

    Args:
        model: local folder or hub id of a reward model the package can load.
        out: the JSON to write (atomically; nothing is written on failure).
        model_id: the path-safe id recorded in the output.
        cfg: the stage config.

    Returns:
        The written result (see the module docstring).

    Raises:
        RuntimeError: when the package is missing or its run fails.
        RewardBenchResultError: when its result files are missing or incomplete.
        FileNotFoundError: when a local dataset copy has no data for the split.
        ValueError: when ``cfg.dataset`` is neither the hub id nor a local path.
    """
    out = Path(out)
    python = cfg.python or sys.executable
    dataset_local = Path(cfg.dataset).exists()
    if not dataset_local and cfg.dataset != CORE_DATASET:
        raise ValueError(
            f"dataset {cfg.dataset!r} is neither {CORE_DATASET} nor an existing"
            " local copy; the package reports per-subset results only for the core"
            " set"
        )
    versions = probe_versions(python)
    logger.info("rewardbench env (%s): %s", python, versions)
    tokenizer = cfg.tokenizer or model
    model_local = Path(model).exists()
    tokenizer_local = Path(tokenizer).exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.run-", dir=out.parent) as tmp:
        run_dir = Path(tmp)
        staged: dict[str, dict] = {}
        model_arg = model
        if model_local:
            changes = stage_folder(Path(model), run_dir / STAGED_MODEL)
            model_arg = STAGED_MODEL
            staged[STAGED_MODEL] = {
                "source": str(Path(model).resolve()),
                "rewritten": changes,
            }
        tokenizer_arg = None
        if cfg.tokenizer is not None:
            tokenizer_arg = cfg.tokenizer
            if tokenizer_local:
                changes = stage_folder(Path(cfg.tokenizer), run_dir / STAGED_TOKENIZER)
                tokenizer_arg = STAGED_TOKENIZER
                staged[STAGED_TOKENIZER] = {
                    "source": str(Path(cfg.tokenizer).resolve()),
                    "rewritten": changes,
                }
        if dataset_local:
            links = stage_dataset(Path(cfg.dataset), cfg.split, run_dir)
            staged[CORE_DATASET] = {
                "source": str(Path(cfg.dataset).resolve()),
                "files": links,
            }
            env["HF_DATASETS_CACHE"] = str(run_dir / "hf-datasets-cache")
        offline = dataset_local and model_local and tokenizer_local
        if offline:  # nothing to fetch: make sure nothing is
            env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        cmd = build_command(python, model_arg, tokenizer_arg, cfg)
        logger.info("running in %s: %s", run_dir, shlex.join(cmd))
        run_logged(cmd, cwd=run_dir, env=env)
        results_path, outputs_path = official_paths(run_dir, model_arg)
        official, rows = read_official(results_path, outputs_path)
        converted = convert_results(
            official,
            rows,
            results_path=results_path,
            outputs_path=outputs_path,
        )
    result = {
        "model_id": model_id,
        "model": str(model),
        "tokenizer": str(tokenizer),
        "benchmark": {
            "name": BENCHMARK_NAME,
            "kind": BENCHMARK_NAME,
            "dataset": cfg.dataset,
            "split": cfg.split,
        },
        "dataset": cfg.dataset,
        "package": PACKAGE,
        "package_version": versions[PACKAGE],
        "command": cmd,
        "command_line": shlex.join(cmd),
        "command_cwd": "a temporary folder beside the output holding `staged`",
        "staged": staged,
        "offline": offline,
        "n_pairs": converted["n_pairs"],
        "accuracy": converted["accuracy"],
        "subsets": converted["subsets"],
        "sections": converted["sections"],
        "overall": converted["overall"],
        "score": converted["score"],
        "settings": {**asdict(cfg), "xstest_weights": XSTEST_WEIGHTS},
        "versions": versions,
        "official": official,
        "pairs": converted["pairs"],
    }
    write_json(out, result)
    logger.info(
        "%s: RewardBench (official %s) score %s, sections %s, accuracy %.4f over"
        " %d pairs -> %s",
        model_id,
        versions[PACKAGE],
        result["score"],
        {k: v["accuracy"] for k, v in result["sections"].items()},
        result["accuracy"],
        result["n_pairs"],
        out,
    )
    return result


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`eval_rewardbench`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.eval_rewardbench",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:5]),
    )
    parser.add_argument("--model", required=True, help="RM folder or hub id")
    parser.add_argument("--model-id", required=True, help="path-safe model id")
    parser.add_argument("--out", type=Path, required=True, help="eval JSON to write")
    add_dataclass_args(parser, EvalRewardBenchConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(EvalRewardBenchConfig, args)
    log_run_header(logger, cfg, model=args.model, model_id=args.model_id)
    eval_rewardbench(args.model, args.out, model_id=args.model_id, cfg=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
