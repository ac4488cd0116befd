"""Stage a model folder and a local dataset for the official RewardBench package.

The package (rewardbench 0.1.4) pins transformers 4.51, while rmflow saves models
with transformers 5. Staging links a model's files into the package's run folder
and writes the transformers 4.x spellings of the config keys that transformers 5
renamed (without them 4.51 silently falls back to default RoPE settings), and
links a local copy of the dataset where ``datasets.load_dataset`` looks before
the hub. Standard library only: it runs in the package's own env.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

CORE_DATASET = "allenai/reward-bench"  # rewardbench/utils.py CORE_EVAL_SET
CORE_SPLIT = "filtered"  # rewardbench/utils.py load_eval_dataset, hard-coded
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")

logger = logging.getLogger(__name__)


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
