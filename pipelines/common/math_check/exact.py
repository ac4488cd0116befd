r"""Fast exact comparisons: plain numbers and simple polynomials, without sympy.

Both readers accept only short, regular inputs (a few hundred characters of
digits, ``\frac``, single-letter variables and small integer powers), so they
run in microseconds whatever the input; anything else returns None and goes
on to the guarded sympy route.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

REL_TOL = 1e-9
"""Relative tolerance of the numeric comparisons."""

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER_RE = re.compile(rf"^([+-]?){_NUM}$")
_SLASH_RE = re.compile(rf"^([+-]?)({_NUM})/({_NUM})$")
_FRAC_RE = re.compile(rf"^([+-]?)\\frac\{{([+-]?{_NUM})\}}\{{([+-]?{_NUM})\}}$")
_FRAC_SHORT_RE = re.compile(r"^([+-]?)\\frac(\d)(\d)$")

_COEF = rf"(?:{_NUM}|\\frac\{{\d+\}}\{{\d+\}})"
_VAR = r"[a-df-hj-zA-DF-HJ-Z](?:\^(?:\d|\{\d{1,3}\}))?"
_TERM_RE = re.compile(rf"([+-]?)({_COEF})?((?:{_VAR})*)")
_VAR_RE = re.compile(r"([A-Za-z])(?:\^\{?(\d+)\}?)?")

Poly = tuple[tuple[tuple[tuple[str, int], ...], Fraction], ...]
"""A polynomial: sorted ``(((variable, power), ...), coefficient)`` terms."""


def _to_fraction(token: str) -> tuple[Fraction, bool]:
    """Parse a numeric literal; the flag says whether it was a decimal."""
    return Fraction(token), "." in token


@lru_cache(maxsize=65536)
def as_number(s: str) -> tuple[Fraction, bool] | None:
    r"""Read ``s`` as an exact number, or return None when it is not one.

    Integers, decimals, ``a/b`` and ``\frac{a}{b}`` are numbers; the flag says
    whether a decimal was involved (compared with a tolerance).
    """
    if _PLAIN_NUMBER_RE.match(s):
        return _to_fraction(s)
    for pattern in (_SLASH_RE, _FRAC_RE, _FRAC_SHORT_RE):
        match = pattern.match(s)
        if match:
            sign, num_s, den_s = match.groups()
            num, inexact_n = _to_fraction(num_s)
            den, inexact_d = _to_fraction(den_s)
            if den == 0:
                return None
            value = num / den
            return (-value if sign == "-" else value), inexact_n or inexact_d
    return None


@lru_cache(maxsize=65536)
def as_poly(s: str) -> tuple[Poly, bool] | None:
    r"""Read ``s`` as a polynomial with numeric coefficients, or return None.

    Only juxtaposed products of single-letter variables (other than ``e`` and
    ``i``, which ``latex2sympy`` may read as constants) are understood, e.g.
    ``3x^2-\frac{1}{2}xy+4``. Variable names are lower-cased like
    ``latex2sympy`` does.
    """
    if not s or not re.search(r"[A-Za-z]", s) or "\\" in s.replace("\\frac", ""):
        return None
    terms: dict[tuple[tuple[str, int], ...], Fraction] = {}
    inexact = False
    pos = 0
    while pos < len(s):
        match = _TERM_RE.match(s, pos)
        if match is None or match.end() == pos:
            return None
        sign, coef_s, vars_s = match.groups()
        if pos > 0 and not sign:
            return None  # terms after the first must be joined by + or -
        if not coef_s and not vars_s:
            return None
        if coef_s is None:
            coef = Fraction(1)
        elif coef_s.startswith("\\frac"):
            num, den = re.findall(r"\d+", coef_s)
            if int(den) == 0:
                return None
            coef = Fraction(int(num), int(den))
        else:
            coef, dec = _to_fraction(coef_s)
            inexact = inexact or dec
        powers: dict[str, int] = {}
        for var, power in _VAR_RE.findall(vars_s):
            name = var.lower()
            powers[name] = powers.get(name, 0) + int(power or 1)
        key = tuple(sorted((v, p) for v, p in powers.items() if p))
        terms[key] = terms.get(key, Fraction(0)) + (-coef if sign == "-" else coef)
        pos = match.end()
    poly = tuple(sorted((k, v) for k, v in terms.items() if v != 0))
    return poly, inexact


def constant_poly(value: Fraction, inexact: bool) -> tuple[Poly, bool]:
    """A constant written as a :data:`Poly`."""
    return ((((), value),) if value else ()), inexact


def close(a: complex, b: complex) -> bool:
    """Whether two numbers agree to :data:`REL_TOL` relative."""
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b)) + 1e-300


def numbers_equal(a: Fraction, b: Fraction, inexact: bool) -> bool:
    """Exact equality, or equality to :data:`REL_TOL` when a decimal is involved."""
    if a == b:
        return True
    return inexact and close(float(a), float(b))


def polys_equal(a: Poly, b: Poly, inexact: bool) -> bool:
    """Equality of two polynomials, coefficient by coefficient."""
    if a == b:
        return True
    if not inexact:
        return False
    da, db = dict(a), dict(b)
    if da.keys() != db.keys():
        return False
    return all(numbers_equal(da[k], db[k], True) for k in da)
