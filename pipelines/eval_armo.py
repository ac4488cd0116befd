r"""ArmoRM accuracy per domain: gated vs uniform vs each attribute vs the BT RM.

    python -m pipelines.eval_armo \
        --test math results/armo/embeddings/math/test/shard0-of-1.safetensors \
        --test code results/armo/embeddings/code/test/shard0-of-1.safetensors \
        --bt math results/eval/rm-general-seed0/math-test.json \
        --bt code results/eval/rm-general-seed0/code-test.json \
        --bt-model-id rm-general-seed0 \
        --scored math results/eval/armo-rm-general-seed0/math-test.json \
        --regression results/armo/regression.safetensors \
        --gating results/armo/gating.safetensors \
        --gating-report results/armo/gating.json \
        --model-id armo-rm-general-seed0 --out results/armo/eval.json

On each domain's test pairs (their extracted embeddings), with the one ArmoRM
formula (:class:`pipelines.common.armo.model.ArmoHead`), strict accuracy
(``s_c > s_r``; ties are wrong) of:

- ``armo``: the gated score ``sum_k g_k (r T)_k`` (each side gated by its own
  prompt embedding, as the assembled model scores a conversation);
- ``uniform``: every gate equal, i.e. the mean of ``r T`` (what the original
  script's softmax over chosen/rejected made of every gate);
- ``attributes``: each attribute's ridge reward ``r_k`` alone;
- ``bt``: the Bradley-Terry RM on the same backbone (``--bt``, its
  ``eval_rm`` result), when the backbone is one;
- ``scored_accuracy``: the assembled model scored end to end by
  ``score_model`` / ``eval_rm`` (``--scored``), on the same pairs (those whose
  embeddings were kept): it must match ``armo`` up to float noise, which
  checks the model folder against its parts.

Also the mean gate per attribute on each domain's prompts, ``overall`` pooled
over the domains, and the debiasing's lambdas and Spearman correlations with
verbosity (from ``--gating-report``). Output layout: see :func:`eval_armo`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipelines.common.cli import UserError, handle_user_errors
from pipelines.common.io import read_json_object, write_json
from pipelines.common.logs import log_run_header, setup_logging

logger = logging.getLogger(__name__)


class EvalArmoError(UserError, ValueError):
    """An input of eval_armo is missing a field."""


def _read_json(path: Path, key: str) -> object:
    data = read_json_object(path)
    if key not in data:
        raise EvalArmoError(f"{path}: no field {key!r}")
    return data[key]


def _scored_accuracy(path: Path, ids: Sequence[str]) -> float | None:
    """Strict accuracy of an eval_rm result on the pairs ``ids``.

    Those whose embeddings were kept: extraction drops over-length rows,
    where scoring would cut them.
    """
    pairs = _read_json(path, "pairs")
    kept = set(ids)
    try:
        got = [(p["chosen"], p["rejected"]) for p in pairs if p["id"] in kept]
    except (KeyError, TypeError) as err:
        raise EvalArmoError(f"{path}: field 'pairs': {err!r}") from err
    if len(got) != len(kept):
        raise EvalArmoError(
            f"{path}: scores {len(got)} of the {len(kept)} pairs embedded"
        )
    scores = np.asarray(got, dtype=np.float64).reshape(-1, 2)
    return _accuracy(scores[:, 0], scores[:, 1])


def _accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float | None:
    """Strict pairwise accuracy (ties wrong); None on no pairs."""
    return float(np.mean(chosen > rejected)) if len(chosen) else None


def _domain_scores(head: object, data: object) -> dict[str, np.ndarray]:
    """Scores, rewards and gates of both sides of a pair set."""
    import torch

    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for side in (0, 1):
            last = torch.as_tensor(data.embeddings[:, side])
            prompt = torch.as_tensor(data.prompt_embeddings[:, side])
            score, rewards, gates = head(last, prompt)
            debiased = rewards @ head.transform
            out.setdefault("score", []).append(score.numpy())
            out.setdefault("rewards", []).append(rewards.numpy())
            out.setdefault("uniform", []).append(debiased.mean(dim=-1).numpy())
            out.setdefault("gates", []).append(gates.numpy())
    return {k: np.stack(v) for k, v in out.items()}  # [2, N, ...]


def _summary(got: Mapping[str, np.ndarray], names: Sequence[str]) -> dict:
    """Accuracies and mean gates of one domain (or the pooled set)."""
    score, rewards, uniform = got["score"], got["rewards"], got["uniform"]
    n = int(score.shape[1])
    return {
        "n_pairs": n,
        "accuracy": {
            "armo": _accuracy(score[0], score[1]),
            "uniform": _accuracy(uniform[0], uniform[1]),
            "attributes": {
                k: _accuracy(rewards[0][:, i], rewards[1][:, i])
                for i, k in enumerate(names)
            },
        },
        "mean_gate": {
            k: (float(got["gates"][0][:, i].mean()) if n else None)
            for i, k in enumerate(names)
        },
    }


def eval_armo(
    tests: Mapping[str, Sequence[Path]],
    regression: Path,
    gating: Path,
    gating_report: Path,
    out: Path,
    *,
    model_id: str,
    backbone: str,
    bt: Mapping[str, Path] | None = None,
    bt_model_id: str | None = None,
    scored: Mapping[str, Path] | None = None,
) -> dict:
    """Evaluate the ArmoRM on every domain's test embeddings; write ``out``.

    Per domain and ``overall``: ``n_pairs``, ``dropped``, ``accuracy``
    (``armo``, ``uniform``, ``bt``, ``attributes``), ``mean_gate``,
    ``scored_accuracy``; and ``verbosity`` (the debiasing).

    Raises:
        EvalArmoError: on a missing file or field.
    """
    from pipelines.common.armo.embeddings import read_shards
    from pipelines.common.armo.model import load_head

    head = load_head(regression, gating)
    names = list(head.attributes)
    bt, scored = bt or {}, scored or {}
    domains, pooled = {}, []
    for domain, paths in tests.items():
        data = read_shards(paths)
        got = _domain_scores(head, data)
        pooled.append(got)
        entry = _summary(got, names)
        entry["dropped"] = len(data.dropped)
        entry["accuracy"]["bt"] = (
            _read_json(bt[domain], "accuracy") if domain in bt else None
        )
        entry["scored_accuracy"] = (
            _scored_accuracy(scored[domain], data.ids) if domain in scored else None
        )
        domains[domain] = entry
    overall = _summary(
        {k: np.concatenate([g[k] for g in pooled], axis=1) for k in pooled[0]}, names
    )
    overall["dropped"] = sum(d["dropped"] for d in domains.values())
    for key, field in (("bt", "bt"), ("scored_accuracy", None)):
        vals = [
            (d["accuracy"][key] if field else d[key], d["n_pairs"])
            for d in domains.values()
        ]
        pooled_acc = (
            sum(a * n for a, n in vals) / sum(n for _, n in vals)
            if vals and all(a is not None for a, _ in vals)
            else None
        )
        if field:
            overall["accuracy"][key] = pooled_acc
        else:
            overall[key] = pooled_acc
    _read_json(gating_report, "attributes")  # a named error when it is not one
    report = read_json_object(gating_report)
    result = {
        "model_id": model_id,
        "backbone": backbone,
        "bt_model_id": bt_model_id,
        "attributes": names,
        "train_on_debiased": report.get("train_on_debiased"),
        "domains": domains,
        "overall": overall,
        "verbosity": _verbosity(report, gating_report),
    }
    write_json(out, result)
    return result


def _verbosity(report: Mapping, path: Path) -> dict:
    """The debiasing's settings and correlations, from the gating report."""
    keys = ("debias_attribute", "tau", "lambdas", "spearman_before", "spearman_after")
    missing = [k for k in keys if k not in report]
    if missing:
        raise EvalArmoError(f"{path}: no field(s) {missing}")
    out = {k: report[k] for k in keys[1:]}
    return {"attribute": report["debias_attribute"], **out}


def _pairs(values: Sequence[Sequence[str]], flag: str) -> dict[str, Path]:
    out = {}
    for domain, path in values:
        if domain in out:
            raise EvalArmoError(f"{flag} {domain} given twice")
        out[domain] = Path(path)
    return out


def make_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.eval_armo",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--test",
        nargs="+",
        action="append",
        required=True,
        metavar=("DOMAIN", "SHARD"),
        help="a domain and its test embeddings (repeat per domain)",
    )
    for flag, what in (("--bt", "the BT RM's"), ("--scored", "the ArmoRM's")):
        parser.add_argument(
            flag,
            nargs=2,
            action="append",
            default=[],
            metavar=("DOMAIN", "JSON"),
            help=f"{what} eval_rm result on a domain's test split",
        )
    parser.add_argument("--bt-model-id", default=None)
    parser.add_argument("--regression", type=Path, required=True)
    parser.add_argument("--gating", type=Path, required=True)
    parser.add_argument("--gating-report", type=Path, required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    log_run_header(logger, {k: str(v) for k, v in vars(args).items()})
    tests = {}
    for domain, *paths in args.test:
        if not paths:
            raise EvalArmoError(f"--test {domain}: no embedding files")
        tests[domain] = [Path(p) for p in paths]
    result = eval_armo(
        tests,
        args.regression,
        args.gating,
        args.gating_report,
        args.out,
        model_id=args.model_id,
        backbone=args.backbone,
        bt=_pairs(args.bt, "--bt"),
        bt_model_id=args.bt_model_id,
        scored=_pairs(args.scored, "--scored"),
    )
    for domain, entry in [*result["domains"].items(), ("overall", result["overall"])]:
        acc = entry["accuracy"]
        best = max(acc["attributes"].items(), key=lambda kv: kv[1] or -1)
        logger.info(
            "%s: ArmoRM %.4f (scored %s), BT %s, uniform %.4f, best attribute %s %.4f",
            domain,
            acc["armo"],
            entry["scored_accuracy"],
            acc["bt"],
            acc["uniform"],
            *best,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
