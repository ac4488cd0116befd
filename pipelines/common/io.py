"""Atomic file output, stale-temporary cleaning, and JSON-lines reading.

Every artifact is written to a temporary sibling and renamed into place, so a
reader (or Snakemake) never sees a half-written file: outputs appear whole or
not at all (DESIGN.md principle 7). Temporaries are created with the umask's
permissions (``0o666``/``0o777`` less the umask, as ``open``/``mkdir`` do), so
results on a shared file system stay readable by the group.

Temporary names, beside output ``NAME``::

    .NAME.<tag>.tmp        a file of atomic_path / atomic_open / write_jsonl
    .NAME.tmp-<tag>        the new folder of atomic_dir
    .NAME.old-<tag>        the previous output of atomic_dir, moved aside

``<tag>`` is ``<host>-<pid>-<random>`` (host: a hash of the host name). A writer
killed mid-write (SIGKILL, preemption, out of memory) leaves its temporary
behind; the next writer of the same output removes it
(:func:`remove_stale_temps`), sparing those of live writers: this process's own
open ones, and those of a running process of this host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, NamedTuple

from pipelines.common.cli import UserError

logger = logging.getLogger(__name__)

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_OWNED_TAG = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]+")
_ANY_TAG = r"[A-Za-z0-9_-]+"  # also the 8-character names of tempfile.mkstemp
# Names of the temporaries this process is writing right now (names, not
# paths: a relative and an absolute spelling of one folder must agree).
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()

BOM = b"\xef\xbb\xbf"


class EmptyOutputError(UserError, ValueError):
    """An output would hold nothing; it is refused rather than written."""


class InputFileError(UserError, ValueError):
    """An input file as a whole is unusable (unreadable, a folder, not JSON lines)."""


class MissingInputError(InputFileError, FileNotFoundError):
    """An input file does not exist."""


# ------------------------------------------------------------- temporaries


def _stale_patterns(name: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Regexes of the file and folder temporaries of output ``name``.

    The tag holds no dot, so ``a.json`` never claims ``.a.jsonl.<tag>.tmp`` nor
    ``.a.json.gz.<tag>.tmp``: those belong to other outputs.
    """
    stem = re.escape(f".{name}.")
    files = re.compile(rf"{stem}(?P<tag>{_ANY_TAG})\.tmp")
    folders = re.compile(rf"{stem}(?P<kind>tmp|old)-(?P<tag>{_ANY_TAG})")
    return files, folders


def _owner_alive(tag: str, path: Path) -> bool:
    """Whether the writer that named temporary ``path`` with ``tag`` still runs."""
    with _LIVE_LOCK:
        if path.name in _LIVE:
            return True
    owned = _OWNED_TAG.fullmatch(tag)
    if owned is None or owned["host"] != _HOST:
        # A writer elsewhere (another node on a shared file system) or from
        # before tags named their owner: Snakemake runs one job per output, so
        # the owner is a killed job.
        return False
    pid = int(owned["pid"])
    if pid == os.getpid() or pid <= 0:
        return False  # this process's live temporaries are in _LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except OverflowError:
        return False
    return True


def remove_stale_temps(path: Path | str) -> list[Path]:
    """Remove the temporaries of output ``path`` that killed writers left.

    When ``path`` is missing and a killed :func:`atomic_dir` had already moved
    the previous output aside (``.NAME.old-<tag>/previous``), that output is
    put back rather than deleted.

    Args:
        path: the output whose temporaries to clean.

    Returns:
        The temporaries removed (or restored).
    """
    path = Path(path)
    files, folders = _stale_patterns(path.name)
    try:
        names = sorted(os.listdir(path.parent))
    except FileNotFoundError:
        return []
    removed = []
    prefix = f".{path.name}."
    for name in names:
        if not name.startswith(prefix):  # cheap first: folders can be large
            continue
        match = files.fullmatch(name) or folders.fullmatch(name)
        tmp = path.parent / name
        if match is None or _owner_alive(match["tag"], tmp):
            continue
        previous = tmp / "previous"
        kind = match.groupdict().get("kind")
        if kind == "old" and not path.exists() and previous.exists():
            os.replace(previous, path)
            logger.warning("restored %s from %s (a killed replace)", path, tmp)
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        logger.info("removed %s, left by a killed writer of %s", tmp, path)
        removed.append(tmp)
    return removed


def _new_temp(path: Path, make: str) -> Path:
    """Create and register a new temporary for ``path`` (``make``: file/folder)."""
    while True:
        tag = f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        if make == "file":
            tmp = path.parent / f".{path.name}.{tag}.tmp"
        else:
            tmp = path.parent / f".{path.name}.{make}-{tag}"
        with _LIVE_LOCK:
            _LIVE.add(tmp.name)  # before it exists: no cleaner sees it unowned
        try:
            if make == "file":  # mode 0o666 and 0o777 less the umask, like open()
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            else:
                os.mkdir(tmp, 0o777)
        except FileExistsError:
            _release(tmp)
            continue
        except BaseException:
            _release(tmp)
            raise
        return tmp


def _release(tmp: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(tmp.name)


# ------------------------------------------------------------ atomic output


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Temporaries that killed writers left beside ``path`` are removed first. On
    any exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: final destination.

    Yields:
        The temporary path to write to (an empty file, mode 0o666 less umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp_path = _new_temp(path, "file")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        _release(tmp_path)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on success.

    Args:
        path: final destination.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.

    Yields:
        The open file object.
    """
    with atomic_path(path) as tmp:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; it replaces ``out`` on success.

    Temporaries that killed writers left beside ``out`` are removed first. An
    existing ``out`` is moved aside, the temp folder renamed into place, then
    the old folder deleted; on error the temp folder is removed and ``out`` is
    left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = _new_temp(out, "tmp")
    old = None
    try:
        yield tmp
        if out.exists():
            old = _new_temp(out, "old")
            os.replace(out, old / "previous")
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:  # put the previous output back
                os.replace(old / "previous", out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not (old / "previous").exists():
            shutil.rmtree(old, ignore_errors=True)  # else it holds the only copy
        raise
    finally:
        _release(tmp)
        if old is not None:
            _release(old)


def _nan_to_none(obj: object) -> object:
    """Replace float NaN by ``None`` recursively (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def dumps_record(record: dict) -> str:
    """Serialise one record as a single deterministic JSON line (NaN -> null)."""
    return json.dumps(_nan_to_none(record), ensure_ascii=False, allow_nan=False)


def write_jsonl(path: Path | str, records: Iterable[dict]) -> int:
    """Write ``records`` atomically as JSON lines.

    Args:
        path: destination file.
        records: dicts to write, one per line.

    Returns:
        The number of records written.
    """
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(dumps_record(rec))
            fh.write("\n")
            n += 1
    return n


def write_jsonl_all(outputs: Mapping[Path, Iterable[dict]]) -> dict[Path, int]:
    """Write several JSON-lines files; each is renamed into place only once all are.

    A failure while writing any of them (a record that is not JSON, a full
    disk) leaves none of them written.

    Args:
        outputs: destination -> records.

    Returns:
        Records written per destination.
    """
    counts: dict[Path, int] = {}
    with contextlib.ExitStack() as stack:
        for path, records in outputs.items():
            fh = stack.enter_context(atomic_open(path))
            counts[path] = 0
            for rec in records:
                fh.write(dumps_record(rec))
                fh.write("\n")
                counts[path] += 1
    return counts


def write_json(path: Path | str, obj: object) -> None:
    """Write ``obj`` atomically as indented JSON (NaN -> null)."""
    with atomic_open(path) as fh:
        json.dump(_nan_to_none(obj), fh, indent=2, ensure_ascii=False, allow_nan=False)
        fh.write("\n")


# ------------------------------------------------------------ JSON-lines input


class LineProblem(NamedTuple):
    """Why one line of a JSON-lines file could not be read."""

    field: str  # where in the row: a field path, "<json>" or "<line>"
    problem: str


def field_path(prefix: str, key: str | int) -> str:
    """``prefix.key`` or ``prefix[i]``: the name of a value inside a record."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def walk_json(value: object, where: str = "") -> Iterator[tuple[str, object]]:
    """Yield ``(field path, item)`` for ``value``, its keys and items, in order.

    Object keys are yielded too (path of the key's value, the key itself),
    before their value. No recursion, so deep nesting cannot overflow.
    """
    stack: list[tuple[str, object]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        yield path, item
        if isinstance(item, Mapping):
            children = []
            for key, val in item.items():
                name = field_path(path, printable(key) if isinstance(key, str) else key)
                children += [(name, key), (name, val)]
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(
                reversed([(field_path(path, i), v) for i, v in enumerate(item)])
            )


def printable(text: str) -> str:
    """``text`` with undecodable bytes/lone surrogates shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def lone_surrogate(text: str) -> str | None:
    """The first character of ``text`` that UTF-8 cannot encode, if any."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return text[err.start]
    return None


def _json_problem(err: json.JSONDecodeError) -> str:
    # Some messages end with "at" ("Unterminated string starting at").
    sep = " " if err.msg.endswith(" at") else " at "
    return f"malformed JSON: {err.msg}{sep}column {err.colno}"


def _undecodable(raw: bytes, err: UnicodeDecodeError) -> LineProblem:
    """Name the field whose text holds the bytes that are not UTF-8."""
    bad = raw[err.start : err.end]
    byte_list = " ".join(f"0x{b:02x}" for b in bad)
    problem = (
        f"invalid UTF-8: byte {byte_list} at byte {err.start + 1} of the line"
        " (is the file in another encoding, e.g. Latin-1?)"
    )
    try:
        obj = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (json.JSONDecodeError, RecursionError):
        return LineProblem("<line>", problem)
    for where, item in walk_json(obj):
        if isinstance(item, str) and lone_surrogate(item) is not None:
            return LineProblem(where or "<line>", problem)
    return LineProblem("<line>", problem)  # pragma: no cover - bytes are in a string


def parse_line(raw: bytes) -> object | LineProblem | None:
    """Parse one line of a JSON-lines file (no line break, no BOM).

    Returns:
        The parsed value, a :class:`LineProblem`, or None for a blank line.
    """
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return _undecodable(raw, err)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return LineProblem("<json>", _json_problem(err))
    except RecursionError:
        return LineProblem("<json>", "malformed JSON: nested too deeply")


def _refuse_pretty_json(source: str, line: int, opener: bytes) -> None:
    """Name a pretty-printed JSON array/object given where JSON lines belong."""
    if opener.startswith(b"["):
        what, jq = "a JSON array", f"jq -c '.[]' {source}"
    elif opener == b"{":
        what, jq = "a JSON object", f"jq -c . {source}"
    else:
        return
    raise InputFileError(
        f"{source}: line {line}: {what} spread over lines, where JSON lines (one"
        f" object per line) are expected; convert it with: {jq}"
    )


def read_json_object(path: Path | str) -> dict:
    """A JSON file holding one object (a stage's result or metrics).

    Raises:
        MissingInputError: when ``path`` does not exist.
        InputFileError: when it is unreadable, not JSON or not an object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise MissingInputError(f"{path}: file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"{path}: cannot read: {err}") from err
    try:
        result = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputFileError(
            f"{path}: malformed JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    if not isinstance(result, dict):
        raise InputFileError(f"{path}: expected a JSON object")
    return result


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, object | LineProblem]]:
    r"""Yield ``(line number, parsed value or problem)`` of a JSON-lines file.

    Lines are numbered from 1 as an editor shows them (split at ``\n`` only);
    blank lines are passed over; a UTF-8 byte-order mark at the start of a line
    is dropped (editors write one at the start of a file, ``cat`` joins such
    files).

    Raises:
        MissingInputError: when ``path`` does not exist.
        InputFileError: when it is a folder or unreadable, or holds one JSON
            document spread over lines (pretty-printed) instead of JSON lines.
    """
    source = str(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError as err:
        raise MissingInputError(f"{source}: file not found") from err
    except IsADirectoryError as err:
        raise InputFileError(f"{source}: a folder, not a JSON-lines file") from err
    except OSError as err:
        raise InputFileError(f"{source}: cannot read: {err.strerror}") from err
    seen = False
    with fh:
        for i, line in enumerate(fh, start=1):
            raw = line.rstrip(b"\n").rstrip(b"\r").removeprefix(BOM)
            value = parse_line(raw)
            if value is None:
                continue
            if not seen and isinstance(value, LineProblem):
                _refuse_pretty_json(source, i, raw.strip())
            seen = True
            yield i, value


def read_jsonl(path: Path | str) -> list[dict]:
    """Read a JSON-lines file written by :func:`write_jsonl` (no validation).

    Raises:
        InputFileError: naming the file and line of the first unreadable line.
    """
    out = []
    for i, value in iter_jsonl(path):
        if isinstance(value, LineProblem):
            raise InputFileError(f"{path}: line {i}: {value.field}: {value.problem}")
        out.append(value)
    return out
