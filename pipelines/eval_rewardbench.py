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
(:mod:`pipelines.common.rewardbench`, xstest weights from
``eval.xstest_weights``: corrected as in rewardbench 0.1.4 constants.py, or
legacy), ``overall`` and ``score`` (the mean of the four sections), per pair
scores, plus ``package_version``, ``command`` and the package's own JSON
under ``official``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
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
from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import write_json
from pipelines.common.logs import log_run_header, setup_logging
from pipelines.common.rewardbench_results import (
    convert_results,
    read_official,
)
from pipelines.common.rewardbench_staging import (
    CORE_DATASET,
    CORE_SPLIT,
    stage_dataset,
    stage_folder,
)

logger = logging.getLogger(__name__)

BENCHMARK_NAME = "rewardbench-official"
PACKAGE = "rewardbench"
ENTRY_MODULE = "rewardbench.rewardbench"  # console script rewardbench -> main()
OUTPUT_DIR = "rewardbench-out/"  # relative to the run folder; trailing / needed
STAGED_MODEL = "model"
STAGED_TOKENIZER = "tokenizer"
TORCH_DTYPES = ("float16", "bfloat16", "float32", "float64")  # Args.torch_dtype
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
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
    xstest_weights: str = field_help(
        "RewardBench xstest weights of the sections: 'corrected' (refuse 154 /"
        " respond 250, rewardbench 0.1.4) or 'legacy' (250 / 154, RLHFlow,"
        " DogeRM); the rule passes eval.xstest_weights",
        default="corrected",
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
        if self.xstest_weights not in rewardbench.XSTEST_MODES:
            raise ValueError(
                f"xstest_weights must be one of {rewardbench.XSTEST_MODES},"
                f" got {self.xstest_weights!r}"
            )
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
            xstest_weights=cfg.xstest_weights,
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
        "settings": asdict(cfg),
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


@handle_user_errors
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
