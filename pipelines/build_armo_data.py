r"""ArmoRM data: multi-objective responses, and the preference / reference pairs.

    python -m pipelines.build_armo_data --kind responses \
        --records results/data/general/train.jsonl results/data/math/train.jsonl \
        --out results/armo/data/multi-objective/train.jsonl

    python -m pipelines.build_armo_data --kind responses \
        --source '{"hub": "RLHFlow/ArmoRM-Multi-Objective-Data-v0.1"}' \
        --attributes '["helpsteer-helpfulness", "helpsteer-correctness"]' \
        --out results/armo/data/multi-objective/train.jsonl

    python -m pipelines.build_armo_data --kind pairs \
        --source '{"hub": "RLHFlow/pair_data_v2_80K_wsafety"}' \
        --out results/armo/data/preference/train.jsonl

``--kind responses`` (ArmoRM stage 1, ALGORITHMS.md section 3) writes one line
per response: ``{"id", "domain", "messages", "labels": {attribute: value}}``
with absolute labels, ``null`` where unknown (read back as NaN). From our own
pair records (``--records``) each pair gives two responses: chosen and
rejected, each labelled with its record's ``attributes`` (correctness,
verbosity, format) and the spurious features the generator injected
(``politeness``, ``length_padding``: 1 where added to the chosen reply, 0
otherwise; NaN for records that do not say), each scaled to [0, 1] over the
rows as the original's ratings are (:func:`scale_to_unit`; verbosity is a
word count). From a source (``--source``: a
file or hub dataset, as in ``data.sources``) each row has ``messages`` and one
column per attribute of ``--attributes``, in that order (the original's
19; ``None`` is NaN; a missing column is an error naming the row). Rows are
shuffled with ``--seed`` (the original: ``shuffle(seed=0)``).

``--kind pairs`` (stage 2) writes standard pair records: our records as they
are (concatenated, in order), or a source's rows normalised by
:func:`pipelines.common.sources.load_entry`. Bad rows raise errors naming the
file, row and field; the output appears whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipelines.common.cli import UserError, handle_user_errors
from pipelines.common.io import EmptyOutputError, write_jsonl
from pipelines.common.logs import log_run_header, setup_logging
from pipelines.common.records import (
    ATTRIBUTES,
    RecordError,
    check_messages,
    read_pairs,
)
from pipelines.common.seeding import rng_for
from pipelines.common.sources import entry_rows, load_entry

logger = logging.getLogger(__name__)

KINDS = ("responses", "pairs")


class ArmoDataError(UserError, ValueError):
    """The inputs of an ArmoRM data file are not a valid combination."""


SPURIOUS = ("politeness", "length_padding")
# The attributes our own records give (build_prefs; the spurious features last).
RECORD_ATTRIBUTES = (*ATTRIBUTES, *SPURIOUS)


def _label(value: object, source: str, row: int, name: str) -> float | None:
    """A label as a float; None (and NaN) = unknown."""
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        x = float(value)
        if math.isnan(x):
            return None
        if math.isfinite(x):
            return x
    raise RecordError(
        source, row, name, f"expected a number or null, got {value!r}"[:200]
    )


def responses_from_records(records: Iterable[Mapping]) -> list[dict]:
    """Two labelled responses (chosen, rejected) per standard pair record."""
    out = []
    for rec in records:
        spurious = rec.get("metadata", {}).get("spurious")
        for side in ("chosen", "rejected"):
            attrs = rec["attributes"][side]
            labels = {k: attrs.get(k) for k in ATTRIBUTES}
            for name in SPURIOUS:
                if not isinstance(spurious, Mapping) or name not in spurious:
                    labels[name] = None  # unknown: not one of our generators
                else:  # features are only ever added to the chosen reply
                    labels[name] = float(side == "chosen" and bool(spurious[name]))
            labels = {k: _label(v, "records", 0, k) for k, v in labels.items()}
            out.append(
                {
                    "id": f"{rec['id']}:{side}",
                    "domain": rec.get("domain"),
                    "messages": rec[side],
                    "labels": labels,
                }
            )
    return out


def scale_to_unit(rows: list[dict], names: Sequence[str]) -> dict[str, list]:
    """Min-max scale each attribute of ``rows`` to [0, 1] in place.

    The original's multi-objective ratings are normalised to [0, 1] per
    objective, and its debiasing grid (``r_k - p r_verbosity``, p <= 0.95)
    assumes rewards on comparable scales; our verbosity is a word count.
    Constant and all-unknown attributes are left as they are.

    Returns:
        Per attribute, the ``[min, max]`` used (None when left as is).
    """
    used: dict[str, list] = {}
    for name in names:
        known = [r["labels"][name] for r in rows if r["labels"][name] is not None]
        lo, hi = (min(known), max(known)) if known else (0.0, 0.0)
        used[name] = [lo, hi] if hi > lo else None
        if hi > lo:
            for r in rows:
                if r["labels"][name] is not None:
                    r["labels"][name] = (r["labels"][name] - lo) / (hi - lo)
    logger.info("attributes scaled to [0, 1] from [min, max] %s", used)
    return used


def responses_from_rows(
    rows: Iterable[tuple[int, object]], source: str, attributes: Sequence[str]
) -> list[dict]:
    """Labelled responses of multi-objective rows (``messages`` + a column each).

    Raises:
        RecordError: naming the row and field of a row that is not an object,
            has bad messages, lacks an attribute column or has a bad label.
    """
    out = []
    for row, value in rows:
        if not isinstance(value, Mapping):
            raise RecordError(source, row, "(row)", "expected a JSON object")
        if "messages" not in value:
            raise RecordError(source, row, "messages", "missing")
        messages = check_messages(value["messages"], source, row, "messages")
        if messages[-1]["role"] != "assistant":
            raise RecordError(
                source, row, "messages", "the last message must be the assistant's"
            )
        labels = {}
        for name in attributes:
            if name not in value:
                raise RecordError(source, row, name, "missing attribute column")
            labels[name] = _label(value[name], source, row, name)
        rid = value.get("id")
        out.append(
            {
                "id": str(rid) if rid is not None else f"{source}#{row}",
                "domain": value.get("domain", "multi-objective"),
                "messages": messages,
                "labels": labels,
            }
        )
    return out


def build_armo_data(
    out: Path,
    *,
    kind: str,
    records: Sequence[Path] = (),
    source: Mapping[str, object] | None = None,
    attributes: Sequence[str] | None = None,
    seed: int = 0,
    on_invalid: str = "error",
) -> dict[str, object]:
    """Write one ArmoRM data file whole; returns a summary (logged).

    Raises:
        ArmoDataError: on neither or both of ``records`` and ``source``, or a
            source of responses without ``attributes``.
        pipelines.common.io.EmptyOutputError: when no row is left.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if bool(records) == (source is not None):
        raise ArmoDataError("give exactly one of --records and --source")
    pairs = (
        [r for path in records for r in read_pairs(path)]
        if records
        else (load_entry(source, on_invalid=on_invalid)[0] if kind == "pairs" else [])
    )
    if kind == "pairs":
        rows = pairs
        names: list[str] = []
    elif records:
        rows = responses_from_records(pairs)
        names = list(attributes or RECORD_ATTRIBUTES)
        rows = [{**r, "labels": {k: r["labels"].get(k) for k in names}} for r in rows]
        scale_to_unit(rows, names)
    else:
        if not attributes:
            raise ArmoDataError("--attributes is required with --source for responses")
        name, raw = entry_rows(source)
        rows, names = responses_from_rows(raw, name, attributes), list(attributes)
    if not rows:
        raise EmptyOutputError(f"{out}: no rows to write")
    if kind == "responses":  # the original: dataset.shuffle(seed=0)
        rng_for(seed, "armo", "responses").shuffle(rows)
    n = write_jsonl(out, rows)
    logger.info("wrote %d %s rows to %s", n, kind, out)
    return {
        "kind": kind,
        "rows": n,
        "attributes": names,
        "labelled": {k: sum(r["labels"][k] is not None for r in rows) for k in names},
        "records": [str(p) for p in records],
        "source": dict(source) if source is not None else None,
        "seed": seed,
    }


def make_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.build_armo_data",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--out", type=Path, required=True, help="output .jsonl")
    parser.add_argument(
        "--records", type=Path, nargs="*", default=[], help="our pair records"
    )
    parser.add_argument(
        "--source", type=json.loads, default=None, help="a source entry (JSON)"
    )
    parser.add_argument(
        "--attributes",
        type=json.loads,
        default=None,
        help="JSON list of label columns (responses); records: the five of ours",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle of responses")
    parser.add_argument(
        "--on-invalid", choices=("error", "skip"), default="error", help="bad pairs"
    )
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    log_run_header(logger, vars(args) | {"out": str(args.out)})
    summary = build_armo_data(
        args.out,
        kind=args.kind,
        records=args.records,
        source=args.source,
        attributes=args.attributes,
        seed=args.seed,
        on_invalid=args.on_invalid,
    )
    logger.info("labelled rows per attribute: %s", summary["labelled"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
