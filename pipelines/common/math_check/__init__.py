r"""Final-answer checking for math responses (ALGORITHMS.md section 6.1).

The check follows the eth-dl-rewards recipe: take the first ``\boxed{...}`` of the
response and of the reference (or the whole stripped text when there is no box),
accept identical strings, otherwise compare the two answers symbolically. Any
failure along the way counts as "not equivalent"; the checker never raises.

Order of the tests inside :func:`is_equiv`, cheapest first:

1. answers longer than :data:`MAX_RAW_CHARS` are only compared as exact
   strings; normalised strings are equal (:func:`normalize_answer`);
2. both answers are plain numbers (integers, decimals, ``a/b``, ``\frac{a}{b}``)
   and are compared exactly with :class:`fractions.Fraction` (with a 1e-9 relative
   tolerance when a decimal is involved, since decimals are often rounded);
3. both answers are sums of monomials with numeric coefficients (``2x+1``,
   ``x^2-3xy``) and are compared term by term;
4. answers longer than :data:`MAX_ANSWER_CHARS`, or that :mod:`.guards` finds
   able to make sympy run away (huge exponents in any notation, huge
   factorials, deep nesting), are refused: not equal;
5. the rest goes to sympy (:mod:`.symbolic`: numeric comparison at sample
   points, then ``simplify``), in a compute child of a server process that
   kills it at the deadline (:mod:`.worker`).

Steps 1-4 are linear in the input and never touch sympy; the generated math
domain's answers all end there. Step 5 returns within ``timeout_s`` plus
:data:`TIMEOUT_MARGIN_S` on any thread; timed-out and failed comparisons
count as "not equal" and are counted in :func:`check_stats`.

Percent signs (``\%`` and ``%``) are dropped by the normaliser, so ``50\%``
equals ``50`` but not ``0.5``: a percent answer is compared as the number of
percent. Symbol names are case-insensitive, as in ``latex2sympy`` (``A`` equals
``a``).
"""

from __future__ import annotations

import logging

from pipelines.common.math_check import exact, worker
from pipelines.common.math_check.exact import REL_TOL
from pipelines.common.math_check.extract import (
    EXTRACTION_MODES,
    answer_of,
    extract_boxed,
)
from pipelines.common.math_check.guards import refusal
from pipelines.common.math_check.limits import MAX_ANSWER_CHARS, MAX_RAW_CHARS
from pipelines.common.math_check.normalize import normalize_answer
from pipelines.common.math_check.worker import TIMEOUT_MARGIN_S

__all__ = [
    "EXTRACTION_MODES",
    "MAX_ANSWER_CHARS",
    "MAX_RAW_CHARS",
    "REL_TOL",
    "TIMEOUT_MARGIN_S",
    "answer_of",
    "check_response",
    "check_stats",
    "extract_boxed",
    "is_equiv",
    "normalize_answer",
]

log = logging.getLogger(__name__)


def _is_equiv(pred: str, ref: str, timeout_s: float) -> bool:
    if len(pred) > MAX_RAW_CHARS or len(ref) > MAX_RAW_CHARS:
        worker.count("too_long")
        pred, ref = pred.strip(), ref.strip()
        return bool(pred) and pred == ref
    a = normalize_answer(pred)
    b = normalize_answer(ref)
    if not a or not b:
        return False
    if a == b:
        return True
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        worker.count("too_long")
        return False
    num_a, num_b = exact.as_number(a), exact.as_number(b)
    if num_a is not None and num_b is not None:
        return exact.numbers_equal(num_a[0], num_b[0], num_a[1] or num_b[1])
    poly_a = exact.as_poly(a) if num_a is None else exact.constant_poly(*num_a)
    poly_b = exact.as_poly(b) if num_b is None else exact.constant_poly(*num_b)
    if poly_a is not None and poly_b is not None:
        return exact.polys_equal(poly_a[0], poly_b[0], poly_a[1] or poly_b[1])
    if timeout_s <= 0:
        return False
    for side in (a, b):
        reason = refusal(side)
        if reason is not None:
            worker.count("refused")
            log.debug("refusing %r: %s", side[:80], reason)
            return False
    return worker.compare(a, b, timeout_s=timeout_s) is True


def is_equiv(pred: str, ref: str, *, timeout_s: float = 2.0) -> bool:
    """Whether a predicted answer is mathematically equal to a reference answer.

    Args:
        pred: the predicted answer (already extracted from its box).
        ref: the reference answer.
        timeout_s: time limit of the sympy comparison; the call returns within
            ``timeout_s`` + :data:`TIMEOUT_MARGIN_S` on any thread (plus, once
            per process, the start of the sympy server). 0 skips sympy: only
            the exact string, number and polynomial tests run.

    Returns:
        True iff the answers are judged equivalent; False for anything empty,
        too long, refused, unparseable, too slow, or raising.
    """
    try:
        return _is_equiv(pred, ref, timeout_s)
    except Exception:
        worker.count("errors")
        log.debug("equivalence check failed: %r vs %r", pred[:80], ref[:80])
        return False


def check_response(response: str, reference: str, *, mode: str = "balanced") -> bool:
    """Whether ``response``'s answer equals ``reference``'s answer.

    Args:
        response: a model response; its first box is the answer.
        reference: a reference solution or bare reference answer.
        mode: box extraction mode, see :func:`extract_boxed`.

    Returns:
        ``is_equiv(answer_of(response), answer_of(reference))``.
    """
    return is_equiv(answer_of(response, mode=mode), answer_of(reference, mode=mode))


def check_stats() -> dict[str, int]:
    """This process's counts of refused, timed-out and failed comparisons.

    See :func:`.worker.stats` for the keys.
    """
    return worker.stats()
