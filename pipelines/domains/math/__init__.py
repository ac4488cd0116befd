r"""Seeded arithmetic and algebra word problems with verified answers.

Each problem family draws its numbers from ``rng_for(seed, "math", family,
split)``, computes the reference answer exactly (:class:`fractions.Fraction`, or a
polynomial held as ``{power: coefficient}``) and writes a worked solution that
ends in ``\boxed{...}``. The rejected solution repeats the same reasoning with
one plausible slip (a carry error, a sign error, a forgotten step, an inverted
fraction...), so its boxed value differs. The chosen solution sometimes boxes an
equivalent but different form of the reference (``0.75`` for ``\frac{3}{4}``,
``\frac{6}{8}``, ``1 + 2x`` for ``2x + 1``), which the checker of
:mod:`pipelines.common.math_check` must accept.

Every draft is checked with :func:`pipelines.common.math_check.check_response`
before it is kept: the chosen response must match the reference and the
rejected one must not.

The answer extraction is a choice (``mode``, ALGORITHMS.md 6.1):
``"balanced"`` (default) reads the first box with nested braces;
``"regex"`` reproduces the eth-dl-rewards pattern ``\\boxed{(.*?)}``, which
stops at the first ``}``. The paper applies that regex to the response and to
the reference *solution*; a task here stores the bare reference answer, so
in regex mode it is read from ``\boxed{reference}`` with the same regex, and
both sides are cut alike (``\frac{3}{4}`` is read as ``\frac{3`` on both
sides). :func:`generate`, :func:`verify_many` and :func:`format_ok` take the
mode; drafts generated in one mode re-verify in the same mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

from pipelines.common.math_check import (
    EXTRACTION_MODES,
    check_response,
    check_stats,
    extract_boxed,
)
from pipelines.common.seeding import rng_for
from pipelines.domains import PairDraft, SftDraft
from pipelines.domains.math.families_algebra import ALGEBRA_FAMILIES
from pipelines.domains.math.families_arith import ARITH_FAMILIES
from pipelines.domains.math.problem import (
    Problem,
    decimal_tex,
    is_terminating,
    poly_tex,
)

log = logging.getLogger(__name__)

DOMAIN = "math"
MAX_TRIES = 200
"""Candidates drawn for one slot before generation gives up."""

_ALT_FORM_RATE = 0.4
_PARALLEL_MIN_ITEMS = 2000

FAMILIES: dict[str, Callable[..., Problem]] = {**ARITH_FAMILIES, **ALGEBRA_FAMILIES}
"""Problem families: subset name -> ``(rng) -> Problem``."""


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------

_INSTRUCTIONS = (
    "Solve the problem step by step. Put your final answer in \\boxed{}, for "
    "example \\boxed{5}, \\boxed{A} or \\boxed{\\frac{5}{100}}.",
    "Think it through step by step, then write the final answer inside "
    "\\boxed{} (for example \\boxed{5} or \\boxed{\\frac{5}{100}}).",
)
_INTROS = (
    "Let's solve this step by step.",
    "We work through the problem carefully.",
    "Here is the reasoning.",
    "",
)
_CLOSINGS = (
    "Therefore, the final answer is $\\boxed{{{}}}$.",
    "So the answer is $\\boxed{{{}}}$.",
    "Final answer: $\\boxed{{{}}}$",
    "The answer is \\boxed{{{}}}.",
)


def _alt_form(problem: Problem, rng) -> tuple[str, str]:
    """An equivalent rendering of the answer, with a label for provenance."""
    value = problem.answer
    if isinstance(value, dict):
        return poly_tex(value, problem.var, ascending=True), "reordered"
    options: list[tuple[str, str]] = []
    if value.denominator == 1:
        n = value.numerator
        options.append((f"{n}.0", "decimal"))
        if abs(n) >= 1000:
            options.append((f"{n:,}", "thousands"))
        if problem.unit == "%":
            options.append((f"{n}\\%", "percent-sign"))
    else:
        k = rng.randint(2, 4)
        sign = "-" if value < 0 else ""
        num, den = abs(value.numerator), value.denominator
        options.append((rf"{sign}\frac{{{k * num}}}{{{k * den}}}", "unreduced"))
        options.append((rf"{sign}\dfrac{{{num}}}{{{den}}}", "dfrac"))
        if is_terminating(value) and problem.kind != "decimal":
            options.append((decimal_tex(value), "decimal"))
        if problem.kind == "decimal":
            options.append((decimal_tex(value) + "0", "trailing-zero"))
            options.append((f"{sign}{num}/{den}", "slash"))
    return rng.choice(options)


def _write(intro: str, steps: Sequence[str], closing: str, answer: str) -> str:
    body = [intro] if intro else []
    body.extend(steps)
    body.append(closing.format(answer))
    return "\n\n".join(body)


@dataclass
class _Draft:
    family: str
    prompt: str
    chosen: str
    rejected: str
    reference: str
    slip: str
    form: str


def _check(response: str, reference: str, mode: str) -> bool:
    r"""Whether ``response`` answers the bare ``reference`` answer, in ``mode``.

    In regex mode the reference is read as the paper reads a reference
    solution: from ``\boxed{reference}``, with the same regex.
    """
    if mode == "regex":
        reference = f"\\boxed{{{reference}}}"
    return check_response(response, reference, mode=mode)


def _check_mode(mode: str) -> None:
    if mode not in EXTRACTION_MODES:
        raise ValueError(
            f"unknown math answer extraction mode {mode!r}"
            f" (expected one of {', '.join(EXTRACTION_MODES)})"
        )


def _draft(family: str, rng, mode: str) -> _Draft | None:
    """Draw one problem and write its verified chosen/rejected responses."""
    problem = FAMILIES[family](rng)
    reference = problem.render(problem.answer)
    prompt = f"{problem.text}\n\n{rng.choice(_INSTRUCTIONS)}"
    intro, closing = rng.choice(_INTROS), rng.choice(_CLOSINGS)
    integral = isinstance(problem.answer, Fraction) and problem.answer.denominator == 1
    if rng.random() < (_ALT_FORM_RATE / 3 if integral else _ALT_FORM_RATE):
        shown, form = _alt_form(problem, rng)
    else:
        shown, form = reference, "canonical"
    chosen = _write(intro, problem.steps, closing, shown)
    slips = list(problem.slips)
    rng.shuffle(slips)
    if not _check(chosen, reference, mode):
        log.debug("chosen answer %r failed against %r", shown, reference)
        return None
    for slip, steps, wrong in slips:
        rejected = _write(intro, steps, closing, problem.render(wrong))
        if not _check(rejected, reference, mode):
            return _Draft(family, prompt, chosen, rejected, reference, slip, form)
    return None


def _split_drafts(
    split: str, count: int, seed: int, seen: set[str], mode: str
) -> list[tuple[str, _Draft]]:
    """``count`` verified drafts for one split, with prompts not in ``seen``."""
    names = list(FAMILIES)
    order = [names[i % len(names)] for i in range(count)]
    rng_for(seed, DOMAIN, split, "families").shuffle(order)
    streams = {f: rng_for(seed, DOMAIN, f, split) for f in names}
    out: list[tuple[str, _Draft]] = []
    for index, family in enumerate(order):
        for _ in range(MAX_TRIES):
            draft = _draft(family, streams[family], mode)
            if draft is not None and draft.prompt not in seen:
                seen.add(draft.prompt)
                out.append((f"{DOMAIN}-{split}-{index:05d}", draft))
                break
        else:
            raise RuntimeError(
                f"could not draw a new verified {family!r} problem for {split!r}"
                f" after {MAX_TRIES} tries"
            )
    return out


def generate(
    counts: Mapping[str, int],
    sft_count: int,
    *,
    seed: int,
    workers: int = 1,
    mode: str = "balanced",
) -> tuple[dict[str, list[PairDraft]], list[SftDraft]]:
    """Generate verified math preference pairs and SFT examples.

    Splits are filled in sorted name order, then SFT, and every prompt is new
    across all of them. Generation is cheap (thousands of pairs per second), so
    it runs in-process; ``workers`` is accepted for the domain contract.

    Args:
        counts: number of pairs per split, e.g. ``{"train": 300, "test": 100}``.
        sft_count: number of SFT examples (prompts disjoint from all pairs).
        seed: run seed; equal seeds give identical output.
        workers: unused (see above).
        mode: answer extraction mode of the verification, ``"balanced"`` or
            ``"regex"`` (see the module docstring).

    Returns:
        ``(splits, sft)``: pair drafts per split and SFT drafts.

    Raises:
        ValueError: on an unknown ``mode``.
    """
    del workers
    _check_mode(mode)
    seen: set[str] = set()
    splits: dict[str, list[PairDraft]] = {}
    for split in sorted(counts):
        splits[split] = [
            PairDraft(
                id=draft_id,
                subset=d.family,
                prompt=d.prompt,
                chosen=d.chosen,
                rejected=d.rejected,
                task={"reference": d.reference},
                meta={"family": d.family, "slip": d.slip, "answer_form": d.form},
            )
            for draft_id, d in _split_drafts(split, counts[split], seed, seen, mode)
        ]
    sft = [
        SftDraft(
            id=draft_id,
            subset=d.family,
            prompt=d.prompt,
            response=d.chosen,
            task={"reference": d.reference},
            meta={"family": d.family, "answer_form": d.form},
        )
        for draft_id, d in _split_drafts("sft", sft_count, seed, seen, mode)
    ]
    log.info(
        "math: %s pairs, %d sft",
        {k: len(v) for k, v in splits.items()},
        len(sft),
    )
    return splits, sft


_FAILURE_EVENTS = ("refused", "timed_out", "errors", "too_long")


def _verify_chunk(
    items: Sequence[tuple[dict, str]], mode: str
) -> tuple[list[bool], dict[str, int]]:
    """Verdicts of ``items``, and the checker's failure events while checking."""
    before = check_stats()
    verdicts = [
        _check(response, str(task["reference"]), mode) for task, response in items
    ]
    after = check_stats()
    events = {k: after.get(k, 0) - before.get(k, 0) for k in _FAILURE_EVENTS}
    return verdicts, events


def verify_many(
    items: Sequence[tuple[dict, str]], *, workers: int = 1, mode: str = "balanced"
) -> list[bool]:
    r"""Re-check ``(task, response)`` pairs against ``task["reference"]``.

    The first ``\boxed{}`` of the response is its answer, so a leading
    sentence or trailing paragraphs do not matter. Answers that the checker
    refused, or whose comparison timed out or failed, count as incorrect; how
    many is logged as a warning.

    Args:
        items: ``(task, response)`` pairs; ``task`` is a draft's ``task`` dict.
        workers: processes to use for large batches.
        mode: answer extraction mode, ``"balanced"`` or ``"regex"`` (see the
            module docstring).

    Returns:
        One bool per item: whether the response's answer is correct.

    Raises:
        ValueError: on an unknown ``mode``.
    """
    _check_mode(mode)
    items = list(items)
    if workers > 1 and len(items) >= _PARALLEL_MIN_ITEMS:
        size = max(1, len(items) // (workers * 8))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_verify_chunk, chunks, [mode] * len(chunks)))
    else:
        results = [_verify_chunk(items, mode)]
    verdicts = [v for chunk_verdicts, _ in results for v in chunk_verdicts]
    events = {k: sum(e[k] for _, e in results) for k in _FAILURE_EVENTS}
    if any(events.values()):
        log.warning(
            "math: %d of %d answers judged incorrect without a full check: %s",
            sum(events.values()),
            len(items),
            {k: n for k, n in events.items() if n},
        )
    return verdicts


def format_ok(response: str, *, mode: str = "balanced") -> bool:
    r"""Whether ``response`` has a ``\boxed{...}`` that ``mode`` can extract.

    In balanced mode the box's braces must close; in regex mode a ``}`` must
    follow the ``\boxed{``.
    """
    return extract_boxed(response, mode=mode) is not None
