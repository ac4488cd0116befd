"""The standard preference-pair format, its validation, and loaders.

A pair record (RLHFlow "standard format", ALGORITHMS.md section 0)::

    {"id": "math-train-00001", "domain": "math", "subset": "fraction",
     "prompt":   [{"role": "user", "content": "..."}],
     "chosen":   [{"role": "user", ...}, {"role": "assistant", "content": "..."}],
     "rejected": [{"role": "user", ...}, {"role": "assistant", "content": "..."}],
     "attributes": {"chosen": {"correctness": 1.0, "verbosity": 57.0, "format": 1.0},
                    "rejected": {...}},
     "metadata": {...}}

``chosen`` and ``rejected`` are full conversations that share the ``prompt``
prefix and end with an assistant turn. Attribute values are numbers, and NaN
where unknown; JSON has no NaN, so files store ``null`` and readers give NaN.

Bring-your-own data may also be in the flat format ``{"prompt": str,
"chosen": str, "rejected": str}``, which :func:`normalize_record` turns into
the standard one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.cli import UserError
from pipelines.common.io import LineProblem, iter_jsonl, lone_surrogate, walk_json

logger = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant"})
ATTRIBUTES = ("correctness", "verbosity", "format")
NAN = float("nan")
# The fields of a row that the standard record keeps (others are dropped).
KEPT_FIELDS = (
    "id",
    "domain",
    "subset",
    "prompt",
    "chosen",
    "rejected",
    "attributes",
    "metadata",
)


class RecordError(UserError, ValueError):
    """A record is malformed; the message names the source, row and field."""

    def __init__(self, source: str, row: int, field_name: str, problem: str) -> None:
        self.source = source
        self.row = row
        self.field = field_name
        self.problem = problem
        super().__init__(f"{source}: row {row}: field '{field_name}': {problem}")


@dataclass
class LoadReport:
    """Counts of a load: rows read, kept and skipped (with reasons)."""

    read: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, err: RecordError) -> None:
        """Count one skipped row and log why."""
        self.skipped += 1
        key = f"{err.field}: {err.problem}"
        self.reasons[key] = self.reasons.get(key, 0) + 1
        logger.warning("skipped %s", err)


def count_words(text: str) -> float:
    """Verbosity attribute: the number of whitespace-separated words."""
    return float(len(text.split()))


def check_messages(value: object, source: str, row: int, name: str) -> list[dict]:
    """A message list checked: roles known, contents non-empty strings."""
    if not isinstance(value, list):
        raise RecordError(
            source,
            row,
            name,
            f"expected a list of messages, got {type(value).__name__}",
        )
    if not value:
        raise RecordError(source, row, name, "empty message list")
    out = []
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, Mapping):
            raise RecordError(
                source, row, where, f"expected an object, got {type(msg).__name__}"
            )
        if "role" not in msg:
            raise RecordError(source, row, f"{where}.role", "missing")
        if "content" not in msg:
            raise RecordError(source, row, f"{where}.content", "missing")
        role, content = msg["role"], msg["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise RecordError(
                source,
                row,
                f"{where}.role",
                f"unknown role {role!r} (expected one of {sorted(ROLES)})",
            )
        if not isinstance(content, str):
            raise RecordError(
                source,
                row,
                f"{where}.content",
                f"expected a string, got {type(content).__name__}",
            )
        if not content.strip():
            raise RecordError(source, row, f"{where}.content", "empty message")
        out.append({"role": role, "content": content})
    return out


def _check_attributes(
    value: object, source: str, row: int
) -> dict[str, dict[str, float]]:
    if value is None:
        return {side: dict.fromkeys(ATTRIBUTES, NAN) for side in ("chosen", "rejected")}
    if not isinstance(value, Mapping):
        raise RecordError(
            source, row, "attributes", "expected an object with 'chosen' and 'rejected'"
        )
    out: dict[str, dict[str, float]] = {}
    for side in ("chosen", "rejected"):
        attrs = value.get(side, {})
        if not isinstance(attrs, Mapping):
            raise RecordError(source, row, f"attributes.{side}", "expected an object")
        clean = dict.fromkeys(ATTRIBUTES, NAN)
        for key, val in attrs.items():
            if val is None:
                clean[key] = NAN
            elif (
                isinstance(val, bool)
                or not isinstance(val, int | float)
                or math.isinf(val)
            ):
                raise RecordError(
                    source,
                    row,
                    f"attributes.{side}.{key}",
                    f"expected a finite number or null, got {val!r}",
                )
            else:
                clean[key] = float(val)
        out[side] = clean
    return out


def _unwritable(rec: Mapping[object, object]) -> tuple[str, str] | None:
    r"""The first value of ``rec`` that cannot be written as UTF-8 JSON, and why.

    Such a value (a lone surrogate from a ``\ud800`` escape, an infinity, a
    date from a Parquet column) would otherwise fail only when the outputs are
    written. Serialising is the fast check; the walk runs only to name the
    field once it failed.
    """
    try:
        text = json.dumps(rec, ensure_ascii=False)
        text.encode("utf-8")
        if "Infinity" not in text:  # else an infinity, or only the word
            return None
    except (TypeError, ValueError):  # ValueError includes UnicodeEncodeError
        pass
    for where, item in walk_json(rec):
        if isinstance(item, str):
            bad = lone_surrogate(item)
            if bad is not None:
                return where, f"not valid Unicode: lone surrogate {bad!r}"
        elif isinstance(item, float):
            if math.isinf(item):
                return where, f"expected a finite number, got {item}"
        elif not (item is None or isinstance(item, int | list | tuple | Mapping)):
            return where, f"expected JSON data, got {type(item).__name__}"
        if isinstance(item, Mapping):
            for key in item:
                if not (key is None or isinstance(key, str | int | float)):
                    return where, f"object key {key!r} is not a string"
    return None


def validate_pair(rec: object, *, source: str, row: int) -> dict:
    """Check one standard-format record and return a clean copy.

    Args:
        rec: the parsed JSON object.
        source: file name (or dataset id) for messages.
        row: 1-based row (line) number for messages.

    Returns:
        The record with defaults filled (attributes NaN where unknown).

    Raises:
        RecordError: naming the source, row and field of the first problem.
    """
    clean = _validate(rec, source, row)
    bad = _unwritable(clean)
    if bad is not None:
        raise RecordError(source, row, *bad)
    return clean


def _validate(rec: object, source: str, row: int) -> dict:
    """:func:`validate_pair` less the check that every value can be written."""
    if not isinstance(rec, Mapping):
        raise RecordError(
            source, row, "<record>", f"expected a JSON object, got {type(rec).__name__}"
        )
    for key in ("id", "chosen", "rejected", "prompt"):
        if key not in rec:
            raise RecordError(source, row, key, "missing")
    rid = rec["id"]
    if not isinstance(rid, str | int) or isinstance(rid, bool) or str(rid) == "":
        raise RecordError(
            source, row, "id", f"expected a non-empty string, got {rid!r}"
        )
    for key in ("domain", "subset"):
        if key in rec and not isinstance(rec[key], str):
            raise RecordError(
                source, row, key, f"expected a string, got {type(rec[key]).__name__}"
            )
    prompt = check_messages(rec["prompt"], source, row, "prompt")
    chosen = check_messages(rec["chosen"], source, row, "chosen")
    rejected = check_messages(rec["rejected"], source, row, "rejected")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise RecordError(
                source,
                row,
                f"{name}[{len(conv) - 1}].role",
                "last message must be the assistant reply",
            )
        if len(conv) < 2 or conv[: len(conv) - 1] != prompt:
            raise RecordError(
                source,
                row,
                name,
                "prompt differs between chosen and rejected: each must be the"
                " record's prompt followed by one assistant reply",
            )
    if prompt[-1]["role"] == "assistant":
        raise RecordError(
            source,
            row,
            f"prompt[{len(prompt) - 1}].role",
            "prompt must not end with an assistant turn",
        )
    if chosen == rejected:
        raise RecordError(source, row, "rejected", "identical to chosen")
    metadata = rec.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise RecordError(source, row, "metadata", "expected an object")
    return {
        "id": str(rid),
        "domain": rec.get("domain", ""),
        "subset": rec.get("subset", ""),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "attributes": _check_attributes(rec.get("attributes"), source, row),
        "metadata": dict(metadata),
    }


def _flat_to_standard(rec: dict, source: str, row: int) -> None:
    """Turn flat string fields into conversations, in place."""
    # A field of the wrong type is named before a missing one: for
    # {"chosen": "text", "rejected": 5} the fault is 'rejected', not 'prompt'.
    for key in ("chosen", "rejected", "prompt"):
        if key in rec and not isinstance(rec[key], str):
            raise RecordError(
                source,
                row,
                key,
                f"expected a string (flat format), got {type(rec[key]).__name__}",
            )
    for key in ("chosen", "rejected", "prompt"):
        if key not in rec:
            raise RecordError(source, row, key, "missing")
    prompt = [{"role": "user", "content": rec["prompt"]}]
    rec["chosen"] = [*prompt, {"role": "assistant", "content": rec["chosen"]}]
    rec["rejected"] = [*prompt, {"role": "assistant", "content": rec["rejected"]}]
    rec["prompt"] = prompt


def _prompt_from_chosen(chosen: object, source: str, row: int) -> list[dict]:
    """The prompt of a record without one: ``chosen`` less its assistant reply.

    Problems are named in ``chosen``, the field the user wrote.
    """
    conv = check_messages(chosen, source, row, "chosen")
    last = len(conv) - 1
    if conv[last]["role"] != "assistant":
        raise RecordError(
            source,
            row,
            f"chosen[{last}].role",
            "last message must be the assistant reply",
        )
    if last == 0:
        raise RecordError(
            source,
            row,
            "chosen",
            "no prompt: the record has no 'prompt' and 'chosen' holds only the"
            " assistant reply",
        )
    return chosen[:last]  # type: ignore[index]


def normalize_record(rec: object, *, source: str, row: int, fmt: str = "auto") -> dict:
    """Turn a standard or flat record into a validated standard record.

    Flat rows are ``{"prompt": str, "chosen": str, "rejected": str}`` (optional
    ``id``, ``subset``); the prompt becomes one user turn. Rows whose ``chosen`` is
    a message list and that lack ``prompt`` get the prompt from the shared prefix.

    Args:
        rec: the parsed row.
        source: file name or dataset id, for messages.
        row: 1-based row number.
        fmt: ``"standard"``, ``"flat"`` or ``"auto"`` (decide from the types).

    Returns:
        A validated standard record.

    Raises:
        RecordError: if the row is malformed.
    """
    if not isinstance(rec, Mapping):
        raise RecordError(
            source, row, "<record>", f"expected a JSON object, got {type(rec).__name__}"
        )
    rec = dict(rec)
    # Checked as written, so that the message names the user's field
    # ('rejected' of a flat row, not the 'rejected[1].content' made from it).
    bad = _unwritable({k: rec[k] for k in KEPT_FIELDS if k in rec})
    if bad is not None:
        raise RecordError(source, row, *bad)
    if fmt == "auto":
        flat = isinstance(rec.get("chosen"), str) or (
            "chosen" not in rec and isinstance(rec.get("rejected"), str)
        )
        fmt = "flat" if flat else "standard"
    if fmt == "flat":
        _flat_to_standard(rec, source, row)
    elif "prompt" not in rec and "chosen" in rec:
        rec["prompt"] = _prompt_from_chosen(rec["chosen"], source, row)
    elif isinstance(rec.get("prompt"), str):
        rec["prompt"] = [{"role": "user", "content": rec["prompt"]}]
    rec.setdefault("id", f"row{row}")
    return _validate(rec, source, row)  # its values were checked above


def iter_rows(path: Path | str) -> Iterator[tuple[int, object]]:
    """Yield ``(row, parsed_json)`` from a JSONL file, rows numbered from 1.

    A row is a line (1-based, as an editor numbers them). A line that is not
    valid JSON or not UTF-8 yields a :class:`RecordError` (field ``<json>``,
    ``<line>`` or the field holding the bad bytes) in place of the object, so
    that :func:`load_pairs` can raise or skip it; blank lines are ignored and a
    byte-order mark is dropped.

    Raises:
        pipelines.common.io.InputFileError: when the file is missing, a
            folder, unreadable or pretty-printed JSON (see
            :func:`pipelines.common.io.iter_jsonl`).
    """
    source = str(path)
    for i, value in iter_jsonl(path):
        if isinstance(value, LineProblem):
            yield i, RecordError(source, i, value.field, value.problem)
        else:
            yield i, value


def load_pairs(
    rows: Iterable[tuple[int, object]],
    *,
    source: str,
    fmt: str = "auto",
    on_invalid: str = "error",
) -> tuple[list[dict], LoadReport]:
    """Validate and normalise rows into standard records.

    Args:
        rows: ``(row_number, parsed_row)`` pairs; a parsed row may be a
            :class:`RecordError` from :func:`iter_rows`.
        source: name used in messages.
        fmt: ``"standard"``, ``"flat"`` or ``"auto"``.
        on_invalid: ``"error"`` raises on the first bad row; ``"skip"`` drops
            bad rows and counts them in the report.

    Returns:
        The records and a :class:`LoadReport`.

    Raises:
        RecordError: on a bad row when ``on_invalid == "error"``.
        ValueError: on an unknown ``on_invalid``.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    report = LoadReport()
    out = []
    for row, rec in rows:
        report.read += 1
        try:
            if isinstance(rec, RecordError):
                raise rec
            out.append(normalize_record(rec, source=source, row=row, fmt=fmt))
        except RecordError as err:
            if on_invalid == "error":
                raise
            report.skip(err)
    report.kept = len(out)
    return out, report


def nan_attributes(attrs: Mapping[str, object]) -> dict[str, float]:
    """Attributes with ``None`` read back as NaN."""
    return {k: (NAN if v is None else float(v)) for k, v in attrs.items()}


def read_pairs(path: Path | str) -> list[dict]:
    """Read and validate a standard-format JSONL file (errors raise)."""
    records, _ = load_pairs(iter_rows(path), source=str(path), fmt="standard")
    return records


def is_nan(x: float) -> bool:
    """True for float NaN."""
    return isinstance(x, float) and math.isnan(x)


def prompt_key(messages: Sequence[Mapping]) -> str:
    """A prompt's identity: its turns' roles and contents (for dedup and exclusion)."""
    return json.dumps([[m["role"], m["content"]] for m in messages])
