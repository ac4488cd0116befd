r"""The sympy route: parse two answers and compare them numerically or symbolically.

This is the only part of the checker that imports sympy and ``latex2sympy``,
and the only part whose run time is not bounded by the input size (sympy and
mpmath do big-integer work in C, which no Python signal interrupts). It
therefore runs in the compute children of :mod:`.server`, which are killed at
the deadline; :func:`sympy_equiv` must never be called on untrusted input in a
process that cannot be killed, except through the in-process fallback of
:mod:`.worker`.

Steps of :func:`sympy_equiv`:

1. both answers are parsed (``latex2sympy2_extended``, or sympy's
   ``parse_expr`` for plain text such as ``sqrt(4)``);
2. parsed trees with huge numeric exponents or factorials are refused
   (a second line behind :mod:`.guards`, on the parsed tree);
3. they are compared numerically: constants must evaluate to finite numbers
   that agree to 1e-9 relative; expressions with free symbols are evaluated at
   three fixed pseudo-random points, each symbol getting its own values;
4. when the numeric test cannot decide (non-numeric objects, NaN...),
   ``simplify(a - b) == 0`` decides when ``use_simplify`` is set.
"""

from __future__ import annotations

import cmath
import hashlib
import logging
import re
from functools import lru_cache

import sympy
from latex2sympy2_extended import latex2sympy
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from pipelines.common.math_check.exact import close
from pipelines.common.math_check.limits import MAX_EXPONENT, MAX_FACTORIAL

log = logging.getLogger(__name__)

_N_POINTS = 3
_PLAIN_TEXT_RE = re.compile(r"^[0-9A-Za-z+\-*/^().\s]+$")
_PLAIN_FUNCTIONS = frozenset({"sqrt", "pi", "exp", "log", "ln", "sin", "cos", "tan"})
_TRANSFORMATIONS = (
    *standard_transformations,
    implicit_multiplication_application,
    convert_xor,
)


def _parse_plain(s: str) -> sympy.Basic | None:
    """Parse plain text (``3/4``, ``sqrt(2)``, ``2x+1``) with ``parse_expr``.

    Only digits, operators, parentheses, single-letter names and a short list
    of function names are accepted, so nothing but arithmetic reaches
    ``parse_expr`` (which evaluates its input).
    """
    if not _PLAIN_TEXT_RE.match(s):
        return None
    names = set(re.findall(r"[A-Za-z]+", s))
    if any(len(n) > 1 and n not in _PLAIN_FUNCTIONS for n in names):
        return None
    # Same reading as latex2sympy: names are lower-cased and ``e`` is Euler's e.
    local = {n: sympy.Symbol(n.lower()) for n in names if len(n) == 1}
    if "e" in local:
        local["e"] = sympy.E
    local.update(
        sqrt=sympy.sqrt, pi=sympy.pi, exp=sympy.exp, log=sympy.log, ln=sympy.log
    )
    local.update(sin=sympy.sin, cos=sympy.cos, tan=sympy.tan)
    return parse_expr(
        s, local_dict=local, transformations=_TRANSFORMATIONS, evaluate=False
    )


@lru_cache(maxsize=16384)
def parse(s: str) -> sympy.Basic | None:
    """Parse a normalised answer into sympy, or return None.

    Plain text goes to ``parse_expr`` first (``latex2sympy`` reads ``sqrt(4)``
    as a product of symbols); LaTeX goes to ``latex2sympy``. Results, including
    failures, are cached.
    """
    plain = "\\" not in s and "{" not in s and "}" not in s
    if plain:
        try:
            expr = _parse_plain(s)
        except Exception:
            expr = None
        if expr is not None:
            return expr
    try:
        return latex2sympy(s)
    except Exception:
        return None


def _undefined(expr: sympy.Basic) -> bool:
    """Whether ``expr`` contains an undefined value (``1/0``, NaN)."""
    try:
        return bool(expr.has(sympy.zoo, sympy.nan))
    except Exception:
        return True


def _small_exponent(exponent: sympy.Basic) -> bool:
    """Whether a numeric exponent is at most :data:`MAX_EXPONENT` in size."""
    if exponent.is_Number:
        return abs(exponent) <= MAX_EXPONENT
    try:
        # ``2^{3}`` in 2^{2^{3}}, ``i\pi`` in e^{i\pi}: .guards has bounded
        # the string, so evaluating the exponent is cheap
        size = abs(complex(exponent.evalf(15)))
    except (TypeError, ValueError):
        return not exponent.has(sympy.Pow, sympy.factorial)
    return size <= MAX_EXPONENT  # False for inf and NaN


def is_safe(expr: sympy.Basic) -> bool:
    """Reject parsed trees whose evaluation could run for minutes in C code."""
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            exponent = node.exp
            if exponent.free_symbols:
                continue
            if not _small_exponent(exponent):
                return False
        elif isinstance(node, sympy.factorial | sympy.factorial2 | sympy.gamma):
            arg = node.args[0]
            if arg.free_symbols:
                continue
            if not arg.is_Number or abs(arg) > MAX_FACTORIAL:
                return False
    return True


def _symbol_value(name: str, point: int) -> float:
    """A fixed pseudo-random value in [0.3, 2.3) for a symbol at a sample point."""
    digest = hashlib.sha256(f"{name}/{point}".encode()).digest()
    value = 0.3 + 2.0 * int.from_bytes(digest[:6], "big") / 2**48
    return -value if point == 2 else value


def _evaluate(
    expr: sympy.Expr, symbols: list[sympy.Symbol], point: int
) -> complex | None:
    """Evaluate ``expr`` with each symbol set to its value at ``point``."""
    subs = {sym: _symbol_value(sym.name, point) for sym in symbols}
    try:
        value = complex(expr.evalf(30, subs=subs))
    except Exception:
        return None
    return value if cmath.isfinite(value) else None


def _numeric_verdict(a: sympy.Basic, b: sympy.Basic) -> bool | None:
    """Compare two sympy objects numerically; None when it cannot be decided."""
    if not isinstance(a, sympy.Expr) or not isinstance(b, sympy.Expr):
        return None
    symbols = sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    if any(not isinstance(s, sympy.Symbol) for s in symbols):
        return None
    points = range(_N_POINTS) if symbols else range(1)
    decided = False
    for point in points:
        va = _evaluate(a, symbols, point)
        vb = _evaluate(b, symbols, point)
        if va is None or vb is None:
            continue
        if not close(va, vb):
            return False
        decided = True
    return True if decided else None


def _symbolic_equal(a: sympy.Basic, b: sympy.Basic) -> bool:
    diff = sympy.simplify(a - b)
    return bool(diff == 0 or diff.is_zero is True)


def sympy_equiv(a_s: str, b_s: str, *, use_simplify: bool = True) -> bool:
    """Whether two normalised answers are equal by sympy (see the module doc).

    Args:
        a_s: a normalised answer that passed :func:`.guards.refusal`.
        b_s: the other one.
        use_simplify: fall back to ``simplify`` when the numeric test cannot
            decide.

    Returns:
        The verdict; False when either side does not parse or is refused.

    Raises:
        Exception: whatever sympy raises while comparing (callers count it as
            "not equal").
    """
    a = parse(a_s)
    b = parse(b_s)
    if a is None or b is None or _undefined(a) or _undefined(b):
        return False
    if a == b:
        return True
    if not (is_safe(a) and is_safe(b)):
        log.debug("refusing to evaluate %r or %r", a_s, b_s)
        return False
    verdict = _numeric_verdict(a, b)
    if verdict is not None:
        return verdict
    return use_simplify and _symbolic_equal(a, b)


def warm_up() -> None:
    """Run both parsers once, so the first real comparison pays no set-up."""
    sympy_equiv(r"\frac{\sqrt{8}}{2}", "sqrt(2)")
