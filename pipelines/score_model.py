r"""Score one model on everything a study needs from it: one process, one load.

    python -m pipelines.score_model --model results/models/rm/general-math/seed0 \
        --model-id rm-general-math-seed0 \
        --benchmark math-test results/data/math/test.jsonl \
        --benchmark autoj '{"kind": "autoj", "path": "data/autoj.jsonl"}' \
        --pair-settings '{"max_length": 1024, "truncation_side": "left"}' \
        --gens results/bon/gens/math.jsonl results/bon/gens/code.jsonl \
        --candidate-settings '{"max_length": 1024}' \
        --out results/scores/rm-general-math-seed0.parquet

Inputs are benchmarks (``--benchmark NAME SPEC``, the spec of
:mod:`pipelines.common.benchmarks`; a plain path stands for a standard file),
each scored on its chosen and rejected conversations, and best-of-n candidate
files (``--gens``), each candidate scored as its prompt plus the reply. Pairs
are encoded with ``--pair-settings`` (YAML ``eval``: max_length,
truncation_side, chat_template, system_prompt), candidates with
``--candidate-settings`` (YAML ``bon.score``); what needs one load (YAML
``score``: batch size, dtype, device, tokenizer, remote code, head seed) is
one value for the job. Every input is read and checked before the model loads;
all sequences are then scored together in length-sorted batches
(:mod:`pipelines.common.scoring`) and written to one store
(:mod:`pipelines.common.score_store`), read by ``eval_rm``, ``bon_estimate``
and the reports without torch. When ``--out`` already holds a store (the rule
marks it ``update()``), inputs whose key is unchanged are copied from it
instead of scored (``--reuse``, :mod:`pipelines.common.score_reuse`): adding a
benchmark scores only that benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines.common.benchmarks import load_benchmark
from pipelines.common.cli import (
    UserError,
    add_dataclass_args,
    dataclass_from_args,
    handle_user_errors,
)
from pipelines.common.io import LineProblem, iter_jsonl
from pipelines.common.logs import (
    PROGRESS_EVERY_S,
    add_progress_arg,
    library_versions,
    log_run_header,
    setup_logging,
)
from pipelines.common.records import ROLES, RecordError
from pipelines.common.score_reuse import input_key, load_context, reusable
from pipelines.common.score_store import (
    CANDIDATE,
    CANDIDATES,
    CHOSEN,
    COLUMNS,
    NO_CANDIDATE,
    PAIRS,
    REJECTED,
    file_sha256,
    gens_input_name,
    parse_benchmark_spec,
    write_store,
)
from pipelines.common.scoring import (
    InputSettings,
    Scored,
    ScorerConfig,
    ScoringInput,
    candidate_conversations,
)

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "numpy")


class ScoreInputError(UserError, ValueError):
    """Inputs that cannot be scored: none, clashing names, an empty gens file."""


@dataclass
class _Input:
    """One input read from disk, with what the store records about it."""

    name: str
    kind: str
    source: object  # benchmark spec or gens path
    ids: list[str]  # per record (pair id or prompt_id)
    sizes: list[int]  # sequences per record: 2 per pair, candidates per line
    conversations: list[list[dict[str, str]]]
    settings: InputSettings
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    load: dict | None = None  # benchmark load counts


def spec_files(spec: Mapping[str, object]) -> list[str]:
    """The local files a benchmark spec reads (its path, its prior sets' path)."""
    files = [str(spec["path"])] if "path" in spec else []
    prior = spec.get("prior_sets")
    if isinstance(prior, Mapping) and "path" in prior:
        files.append(str(prior["path"]))
    return files


def _read_benchmark(name: str, spec: Mapping, settings: InputSettings) -> _Input:
    if "/" in name or not name:
        raise ScoreInputError(
            f"benchmark name {name!r}: must be non-empty, without '/'"
        )
    bench = load_benchmark(spec)
    recs = bench.records
    return _Input(
        name=name,
        kind=PAIRS,
        source=dict(spec),
        ids=[str(r["id"]) for r in recs],
        sizes=[2] * len(recs),
        # all chosen, then all rejected: the order eval_rm always scored in
        conversations=[r["chosen"] for r in recs] + [r["rejected"] for r in recs],
        settings=settings,
        files={f: file_sha256(f) for f in spec_files(spec)},
        load=bench.counts(),
    )


def _check_line(value: object, source: str, row: int) -> dict:
    """A gens line with a prompt id, a message prompt and candidate texts."""
    if not isinstance(value, dict):
        raise RecordError(source, row, "<record>", "expected a JSON object")
    pid = value.get("prompt_id")
    if isinstance(pid, bool) or not isinstance(pid, str | int) or str(pid) == "":
        raise RecordError(source, row, "prompt_id", f"expected an id, got {pid!r}")
    prompt = value.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise RecordError(source, row, "prompt", "expected a non-empty message list")
    for i, msg in enumerate(prompt):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise RecordError(source, row, f"prompt[{i}].role", "unknown or missing")
        if not isinstance(msg.get("content"), str):
            raise RecordError(source, row, f"prompt[{i}].content", "expected a string")
    cands = value.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise RecordError(source, row, "candidates", "expected a non-empty list")
    for k, cand in enumerate(cands):
        if not isinstance(cand, dict) or not isinstance(cand.get("text"), str):
            raise RecordError(source, row, f"candidates[{k}].text", "expected a string")
    return value


def _read_gens(path: Path, settings: InputSettings) -> _Input:
    lines = []
    for row, value in iter_jsonl(path):
        if isinstance(value, LineProblem):
            raise RecordError(str(path), row, value.field, value.problem)
        line = _check_line(value, str(path), row)
        if settings.max_candidates is not None:  # the first k of each prompt
            line = {**line, "candidates": line["candidates"][: settings.max_candidates]}
        lines.append(line)
    if not lines:
        raise ScoreInputError(f"{path}: no candidates")
    ids = [str(ln["prompt_id"]) for ln in lines]
    seen: set[str] = set()
    for pid in ids:
        if pid in seen:
            raise ScoreInputError(f"{path}: prompt_id {pid!r} repeats")
        seen.add(pid)
    return _Input(
        name=gens_input_name(path),
        kind=CANDIDATES,
        source=str(path),
        ids=ids,
        sizes=[len(ln["candidates"]) for ln in lines],
        conversations=[c for ln in lines for c in candidate_conversations(ln)],
        settings=settings,
        files={str(path): file_sha256(path)},
    )


def read_inputs(
    benchmarks: Mapping[str, Mapping],
    gens: Sequence[Path],
    *,
    pair_settings: InputSettings,
    candidate_settings: InputSettings,
) -> list[_Input]:
    """Read and check every input before any model is loaded.

    Raises:
        UserError: no inputs, repeated names, a bad benchmark row or gens line
            (naming file, row and field), an empty gens file.
    """
    items = [_read_benchmark(n, s, pair_settings) for n, s in benchmarks.items()]
    items += [_read_gens(Path(p), candidate_settings) for p in gens]
    if not items:
        raise ScoreInputError("nothing to score: give --benchmark and/or --gens")
    names = [it.name for it in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ScoreInputError(
            f"inputs share names {repeated} (gens files need distinct stems)"
        )
    return items


def _columns(item: _Input, got: Scored) -> dict[str, list]:
    """Store rows of one input: pairs row by row, candidates line by line."""
    cols: dict[str, list] = {k: [] for k in COLUMNS}

    def add(row: int, rid: str, side: str, cand: int, k: int) -> None:
        values = (item.name, row, rid, side, cand)
        values += (float(got.scores[k]), bool(got.truncated[k]))
        for name, value in zip(COLUMNS, values, strict=True):
            cols[name].append(value)

    if item.kind == PAIRS:
        n = len(item.ids)
        for i, rid in enumerate(item.ids):
            add(i, rid, CHOSEN, NO_CANDIDATE, i)
            add(i, rid, REJECTED, NO_CANDIDATE, n + i)
    else:
        k = 0
        for i, (rid, size) in enumerate(zip(item.ids, item.sizes, strict=True)):
            for c in range(size):
                add(i, rid, CANDIDATE, c, k)
                k += 1
    return cols


def _input_record(it: _Input, got: Scored) -> dict:
    n = len(it.ids)
    rec = {
        "kind": it.kind,
        "source": it.source,
        "files": it.files,
        "settings": asdict(it.settings),
        "chat_format": got.chat_format.record(with_template=False),
        "n_records": n,
        "n_sequences": len(it.conversations),
        "n_truncated": got.n_truncated,
    }
    if it.kind == PAIRS:
        rec["n_truncated_chosen"] = int(got.truncated[:n].sum())
        rec["n_truncated_rejected"] = int(got.truncated[n:].sum())
        rec["load"] = it.load
    return rec


def _row_ids(item: _Input) -> list[str]:
    """The record id of each stored row group: per pair, or per candidate."""
    if item.kind == PAIRS:
        return list(item.ids)
    return [
        rid for rid, size in zip(item.ids, item.sizes, strict=True) for _ in range(size)
    ]


def _previous(
    out: Path, model: str, cfg: ScorerConfig, items: Sequence[_Input]
) -> tuple[dict[str, str | None], dict, dict]:
    """Keys of the inputs now, and the previous store's reusable inputs."""
    context = load_context(model, cfg) if cfg.reuse else None
    keys = {
        it.name: input_key(
            context,
            kind=it.kind,
            source=it.source,
            files=it.files,
            settings=it.settings,
        )
        for it in items
    }
    if not cfg.reuse:
        return keys, {}, {}
    meta, rows = reusable(out, keys, {it.name: _row_ids(it) for it in items})
    return keys, meta, rows


def score_model(
    model: str,
    out: Path,
    *,
    model_id: str,
    cfg: ScorerConfig,
    benchmarks: Mapping[str, Mapping] | None = None,
    gens: Sequence[Path] = (),
    pair_settings: InputSettings | None = None,
    candidate_settings: InputSettings | None = None,
    progress_every: float = PROGRESS_EVERY_S,
) -> dict:
    """Score every benchmark pair and candidate with one load; write the store.

    Inputs whose key is unchanged since the store at ``out`` was written are
    copied from it, not scored again (``cfg.reuse``,
    :mod:`pipelines.common.score_reuse`); when all are, the model is not
    loaded at all.

    Args:
        model: folder or hub id of a sequence-classification model.
        out: the store to write (atomically; nothing is written on failure).
        model_id: the path-safe id recorded in the store.
        cfg: the load settings.
        benchmarks: name -> benchmark spec.
        gens: best-of-n candidate files.
        pair_settings: encoding of every benchmark's conversations.
        candidate_settings: encoding of every candidate conversation.
        progress_every: seconds between two progress lines of the scoring.

    Returns:
        Summary: ``n_sequences``, ``n_scored`` (the rest were reused),
        ``reused`` (input names), ``seconds`` (load, score) and per input
        ``n_sequences``, ``n_truncated`` and ``mean_score``.

    Raises:
        UserError: on bad inputs (see :func:`read_inputs`).
    """
    from pipelines.common.scoring import load_scorer, score_inputs

    items = read_inputs(
        benchmarks or {},
        gens,
        pair_settings=pair_settings or InputSettings(),
        candidate_settings=candidate_settings or InputSettings(),
    )
    start = time.perf_counter()
    keys, previous, reused = _previous(Path(out), model, cfg, items)
    fresh = [it for it in items if it.name not in reused]
    columns: dict[str, dict[str, list]] = {}
    inputs: dict[str, dict] = {}
    if fresh:
        scorer = load_scorer(model, cfg)
        loaded = time.perf_counter()
        scored = score_inputs(
            scorer,
            [ScoringInput(it.name, it.conversations, it.settings) for it in fresh],
            what=f"score_model {model_id}",
            every_s=progress_every,
        )
        pool = [it.name for it in fresh]
        for it in fresh:
            columns[it.name] = _columns(it, scored[it.name])
            inputs[it.name] = {**_input_record(it, scored[it.name]), "pool": pool}
        load, tokenizer = scorer.record(), scorer.tokenizer_name
    else:  # every key matched: same model bytes, settings, device and code
        loaded = time.perf_counter()
        load, tokenizer = previous["load"], previous["tokenizer"]
    done = time.perf_counter()
    for name, rows in reused.items():
        columns[name] = {c: rows[c].tolist() for c in COLUMNS}
        inputs[name] = previous["inputs"][name]
    for name in inputs:
        inputs[name]["key"] = keys[name]
    order = [it.name for it in items]
    metadata = {
        "model_id": model_id,
        "model": str(model),
        "tokenizer": tokenizer,
        "load": load,
        "sort_by_length": True,
        "versions": library_versions(VERSIONED_PACKAGES),
        "inputs": {name: inputs[name] for name in order},
    }
    merged = {c: [v for name in order for v in columns[name][c]] for c in COLUMNS}
    write_store(out, merged, metadata)
    return _summarize(
        model_id,
        out,
        inputs,
        columns,
        fresh=[it.name for it in fresh],
        seconds={"load": loaded - start, "score": done - loaded},
    )


def _summarize(
    model_id: str,
    out: Path,
    inputs: Mapping[str, dict],
    columns: Mapping[str, dict[str, list]],
    *,
    fresh: Sequence[str],
    seconds: Mapping[str, float],
) -> dict:
    """The summary :func:`score_model` returns, logged."""
    summary = {
        "n_sequences": sum(len(c["score"]) for c in columns.values()),
        "n_scored": sum(len(columns[name]["score"]) for name in fresh),
        "reused": sorted(set(inputs) - set(fresh)),
        "seconds": dict(seconds),
        "inputs": {
            name: {
                "n_sequences": info["n_sequences"],
                "n_truncated": info["n_truncated"],
                "mean_score": float(np.mean(columns[name]["score"])),
            }
            for name, info in inputs.items()
        },
    }
    logger.info(
        "%s: %d sequences of %d inputs scored in %.2fs after a %.2fs load, %d"
        " sequences of %s reused from the previous store -> %s; per input %s",
        model_id,
        summary["n_scored"],
        len(fresh),
        seconds["score"],
        seconds["load"],
        summary["n_sequences"] - summary["n_scored"],
        summary["reused"] or "no input",
        out,
        json.dumps(summary["inputs"], sort_keys=True),
    )
    return summary


def _settings_arg(what: str) -> Callable[[str], InputSettings]:
    """An argparse type: JSON text -> :class:`InputSettings` (errors name ``what``)."""

    def parse(text: str) -> InputSettings:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from err
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object: {text!r}")
        try:
            return InputSettings.from_mapping(value, what)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    parse.__name__ = "JSON"
    return parse


def make_parser() -> argparse.ArgumentParser:
    """The CLI of :func:`score_model`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.score_model",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:11]),
    )
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument("--model-id", required=True, help="path-safe model id")
    parser.add_argument("--out", type=Path, required=True, help="store to write")
    parser.add_argument(
        "--benchmark",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "SPEC"),
        help="a benchmark: its name and a JSON spec or a standard file (repeatable)",
    )
    parser.add_argument(
        "--gens", type=Path, nargs="*", default=[], help="candidate JSONL files"
    )
    parser.add_argument(
        "--pair-settings",
        type=_settings_arg("--pair-settings"),
        default=InputSettings(),
        help="JSON: max_length, truncation_side, chat_template, system_prompt of"
        " the benchmarks (YAML eval)",
    )
    parser.add_argument(
        "--candidate-settings",
        type=_settings_arg("--candidate-settings"),
        default=InputSettings(),
        help="the same for the candidates (YAML bon.score)",
    )
    add_progress_arg(parser)
    add_dataclass_args(parser, ScorerConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(ScorerConfig, args)
    benchmarks: dict[str, dict] = {}
    for name, text in args.benchmark:
        if name in benchmarks:
            raise ScoreInputError(f"--benchmark {name} given twice")
        benchmarks[name] = parse_benchmark_spec(text)
    log_run_header(
        logger,
        cfg,
        model=args.model,
        model_id=args.model_id,
        benchmarks=json.dumps(benchmarks, sort_keys=True),
        gens=[str(p) for p in args.gens],
        pair_settings=asdict(args.pair_settings),
        candidate_settings=asdict(args.candidate_settings),
        out=str(args.out),
        versions=library_versions(VERSIONED_PACKAGES),
    )
    score_model(
        args.model,
        args.out,
        model_id=args.model_id,
        cfg=cfg,
        benchmarks=benchmarks,
        gens=args.gens,
        pair_settings=args.pair_settings,
        candidate_settings=args.candidate_settings,
        progress_every=args.progress_every,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
