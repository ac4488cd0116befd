"""Bring-your-own preference data: local JSONL/Parquet files or hub datasets.

A source spec (``data.sources.<domain>`` in the config) is either one pool that
is split with a seeded shuffle::

    {"path": "my/pairs.jsonl", "test_fraction": 0.1}
    {"hub": "argilla/ultrafeedback-binarized-preferences-cleaned",
     "hub_split": "train", "test_fraction": 0.1}

or one entry per split::

    {"splits": {"train": {"path": "a.parquet"},
                "test": {"hub": "allenai/reward-bench", "hub_split": "filtered"}}}

Every entry may set ``format`` (``auto``, ``standard``, ``flat``) and, for hub
ids, ``hub_config`` and ``revision``. A ``hub`` value that is a local directory
is loaded by ``datasets`` the same way, which is how the hub path is tested
offline. Rows are validated and normalised by
:func:`pipelines.common.records.load_pairs`; errors name file, row and field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pipelines.common.cli import UserError
from pipelines.common.io import InputFileError, MissingInputError
from pipelines.common.records import LoadReport, iter_rows, load_pairs
from pipelines.common.seeding import rng_for

logger = logging.getLogger(__name__)

ENTRY_KEYS = {"path", "hub", "hub_split", "hub_config", "revision", "format"}
FORMATS = ("auto", "standard", "flat")
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class SourceSpecError(UserError, ValueError):
    """A source spec (``data.sources.<domain>``) is malformed."""


def _parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise InputFileError(f"{path}: not a readable Parquet file: {err}") from err
    yield from enumerate(table.to_pylist(), start=1)


def _hub_rows(entry: Mapping[str, object]) -> Iterator[tuple[int, object]]:
    import datasets

    name = f"{entry['hub']}[{entry.get('hub_split', 'train')}]"
    try:
        ds = datasets.load_dataset(
            str(entry["hub"]),
            name=entry.get("hub_config"),
            split=str(entry.get("hub_split", "train")),
            revision=entry.get("revision"),
        )
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        # Not found, hub unreachable (offline) or no such split/config: the
        # message is the user's to act on; the traceback stays in the log.
        raise InputFileError(f"{name}: cannot load the dataset: {err}") from err
    yield from enumerate(ds, start=1)


def file_rows(path: Path) -> Iterator[tuple[int, object]]:
    """``(row, parsed row)`` of a local .jsonl/.json/.parquet file.

    The file is checked when this is called (not when iterated), so a missing
    file, a folder or an unknown type raise at once.

    Raises:
        pipelines.common.io.MissingInputError: when ``path`` does not exist.
        pipelines.common.io.InputFileError: on a folder or an unknown type.
    """
    if not path.exists():
        raise MissingInputError(f"source file not found: {path}")
    if path.is_dir():
        raise InputFileError(
            f"{path}: a folder, not a data file; give a .jsonl, .json or .parquet"
            f" file, or load a `datasets` folder with 'hub': '{path}'"
        )
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputFileError(
            f"{path}: unsupported file type {path.suffix!r}"
            " (use .jsonl, .json (JSON lines) or .parquet)"
        )
    return iter_rows(path) if kind == "jsonl" else _parquet_rows(path)


def _check_entry(entry: object) -> Mapping[str, object]:
    if not isinstance(entry, Mapping):
        raise SourceSpecError(
            f"a source entry must be an object with 'path' or 'hub', got {entry!r}"
        )
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise SourceSpecError(
            f"unknown source key(s) {sorted(unknown)}; allowed {sorted(ENTRY_KEYS)}"
        )
    if ("path" in entry) == ("hub" in entry):
        raise SourceSpecError(
            f"a source entry needs exactly one of 'path' or 'hub': {dict(entry)}"
        )
    if entry.get("format", "auto") not in FORMATS:
        raise SourceSpecError(
            f"source 'format' must be one of {list(FORMATS)}, got {entry['format']!r}"
        )
    return entry


def entry_rows(
    entry: Mapping[str, object],
) -> tuple[str, Iterator[tuple[int, object]]]:
    """The source name and raw ``(row, value)`` rows of one entry, unvalidated.

    For readers of other row shapes than preference pairs (ArmoRM's
    multi-objective rows); :func:`load_entry` validates pairs.

    Raises:
        SourceSpecError: on a malformed entry.
    """
    entry = _check_entry(entry)
    if "path" in entry:
        path = Path(str(entry["path"]))
        return str(path), file_rows(path)
    source = f"{entry['hub']}[{entry.get('hub_split', 'train')}]"
    return source, _hub_rows(entry)


def load_entry(
    entry: Mapping[str, object], *, on_invalid: str = "error"
) -> tuple[list[dict], LoadReport]:
    """Load and normalise one source entry (a file or a hub dataset).

    Args:
        entry: ``{"path": ...}`` or ``{"hub": ...}`` plus options.
        on_invalid: ``"error"`` or ``"skip"``.

    Returns:
        Standard records and the load report.

    Raises:
        SourceSpecError: on a spec without exactly one of path/hub, an unknown
            key or format.
        pipelines.common.io.MissingInputError: when a local path does not exist.
        pipelines.common.io.InputFileError: on a folder, a file type that is not
            .jsonl/.json/.parquet, an unreadable file or dataset, or no valid rows.
        pipelines.common.records.RecordError: on a bad row with ``on_invalid="error"``.
    """
    fmt = str(_check_entry(entry).get("format", "auto"))
    source, rows = entry_rows(entry)
    records, report = load_pairs(rows, source=source, fmt=fmt, on_invalid=on_invalid)
    logger.info(
        "%s: read %d rows, kept %d, skipped %d %s",
        source,
        report.read,
        report.kept,
        report.skipped,
        report.reasons or "",
    )
    if not report.read:
        raise InputFileError(f"{source}: no rows (an empty file or dataset)")
    if not records:
        raise InputFileError(
            f"{source}: no valid rows: all {report.read} were skipped"
            f" ({report.reasons})"
        )
    return records, report


def load_source(
    spec: Mapping[str, object],
    *,
    splits: Sequence[str],
    seed: int,
    on_invalid: str = "error",
) -> dict[str, list[dict]]:
    """Load a source spec into the requested splits.

    Args:
        spec: see the module docstring.
        splits: split names wanted (e.g. ``["train", "test"]``).
        seed: seeds the pool shuffle.
        on_invalid: ``"error"`` or ``"skip"``.

    Returns:
        Records per split.

    Raises:
        SourceSpecError: when the spec is malformed, a requested split has no
            entry, or a pool is asked for splits other than train and test.
    """
    if not isinstance(spec, Mapping):
        raise SourceSpecError(f"a source must be an object, got {spec!r}")
    if "splits" in spec:
        per_split = spec["splits"]
        if not isinstance(per_split, Mapping):
            raise SourceSpecError("source 'splits' must map split names to entries")
        missing = [s for s in splits if s not in per_split]
        if missing:
            raise SourceSpecError(f"source has no entry for split(s) {missing}")
        return {s: load_entry(per_split[s], on_invalid=on_invalid)[0] for s in splits}
    extra = [s for s in splits if s not in ("train", "test")]
    if extra:
        raise SourceSpecError(
            f"a single-pool source fills only train and test, not {extra};"
            " give per-split entries under 'splits'"
        )
    # DogeRM splits off 10% for evaluation without a seed; we seed it (spec 4.1).
    fraction = spec.get("test_fraction", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise SourceSpecError(f"test_fraction must be a number, got {fraction!r}")
    if not 0.0 < fraction < 1.0:
        raise SourceSpecError(f"test_fraction must be in (0, 1), got {fraction}")
    entry = {k: v for k, v in spec.items() if k != "test_fraction"}
    records, _ = load_entry(entry, on_invalid=on_invalid)
    order = list(range(len(records)))
    rng_for(seed, "source-split").shuffle(order)
    n_test = max(1, round(fraction * len(records))) if "test" in splits else 0
    test_idx = set(order[:n_test])
    out = {
        "train": [r for i, r in enumerate(records) if i not in test_idx],
        "test": [r for i, r in enumerate(records) if i in test_idx],
    }
    return {s: out[s] for s in splits}
