"""Problems of the math domain: rendering of answers and the shared word lists.

A :class:`Problem` holds one drawn problem: its statement, exact answer (a
:class:`fractions.Fraction` or a polynomial ``{power: coefficient}``), worked
steps and slipped variants; the family modules draw them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

Value = Fraction | dict[int, int]
"""An exact answer: a number, or a polynomial as ``{power: coefficient}``."""

# --------------------------------------------------------------------------
# Rendering numbers and polynomials
# --------------------------------------------------------------------------


def is_terminating(v: Fraction) -> bool:
    """Whether ``v`` has a finite decimal expansion."""
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def decimal_tex(v: Fraction) -> str:
    """Exact decimal digits of a terminating fraction, without trailing zeros."""
    places = 0
    while (v * 10**places).denominator != 1:
        places += 1
    if places == 0:
        return str(v.numerator)
    scaled = abs(v.numerator * 10**places // v.denominator)
    digits = str(scaled).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"-{text}" if v < 0 else text


def frac_tex(v: Fraction) -> str:
    r"""``\frac{p}{q}`` (integers stay integers)."""
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return rf"{sign}\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def num_tex(v: Fraction) -> str:
    """An integer, else a decimal when it terminates, else a fraction."""
    if v.denominator == 1:
        return str(v.numerator)
    return decimal_tex(v) if is_terminating(v) else frac_tex(v)


def round2_tex(v: Fraction) -> str:
    """A terminating decimal, or the value rounded to two decimals."""
    if is_terminating(v):
        return decimal_tex(v)
    return f"{float(v):.2f}"


def signed_tex(n: int) -> str:
    """`` + n`` or `` - n`` for writing ``a x + b``."""
    return f" - {-n}" if n < 0 else f" + {n}"


def signed_term_tex(c: int, mono: str) -> str:
    """`` + 3x``, `` - x``... for writing a term after another one."""
    term = coef_term_tex(abs(c), mono)
    return f" - {term}" if c < 0 else f" + {term}"


def coef_term_tex(c: int, mono: str) -> str:
    """``3x``, ``x``, ``-x`` or ``5``: a coefficient times a monomial."""
    if mono and c == 1:
        return mono
    if mono and c == -1:
        return f"-{mono}"
    return f"{c}{mono}"


def poly_tex(poly: dict[int, int], var: str, *, ascending: bool = False) -> str:
    """Write ``{power: coefficient}`` as LaTeX, highest power first by default."""
    powers = sorted((p for p, c in poly.items() if c), reverse=not ascending)
    if not powers:
        return "0"
    parts: list[str] = []
    for p in powers:
        mono = "" if p == 0 else var if p == 1 else f"{var}^{p}"
        term = coef_term_tex(poly[p], mono)
        if not parts:
            parts.append(term)
        elif term.startswith("-"):
            parts.append(f" - {term[1:]}")
        else:
            parts.append(f" + {term}")
    return "".join(parts)


# --------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------


@dataclass
class Problem:
    """One drawn problem: statement, exact answer, steps and slipped variants."""

    text: str
    answer: Value
    kind: str  # "int", "frac", "decimal", "percent" or "expr"
    steps: list[str]
    slips: list[tuple[str, list[str], Value]]
    var: str = "x"
    unit: str = ""

    def render(self, value: Value) -> str:
        """The canonical LaTeX of ``value`` for this problem's answer kind."""
        if isinstance(value, dict):
            return poly_tex(value, self.var)
        if self.kind == "frac":
            return frac_tex(value)
        if self.kind == "percent":
            return round2_tex(value)
        return num_tex(value)


NAMES = (
    "Maya",
    "Liam",
    "Sofia",
    "Noah",
    "Aisha",
    "Kenji",
    "Elena",
    "Omar",
    "Priya",
    "Lucas",
    "Hana",
    "Mateo",
    "Zara",
    "Felix",
    "Nadia",
    "Tariq",
    "Ingrid",
    "Ravi",
    "Chloe",
    "Diego",
    "Amara",
    "Jonas",
    "Leila",
    "Marcus",
    "Yuki",
    "Tessa",
)
COLLECTIBLES = (
    "stickers",
    "marbles",
    "stamps",
    "trading cards",
    "seashells",
    "coins",
    "postcards",
    "beads",
    "buttons",
    "badges",
)
BAKED = ("muffins", "cookies", "rolls", "bagels", "cupcakes", "scones")
FOODS = ("pizza", "pie", "cake", "lasagna", "watermelon", "chocolate bar")
ITEMS = (
    "jacket",
    "bicycle",
    "lamp",
    "backpack",
    "pair of shoes",
    "board game",
    "headphones",
    "desk chair",
    "tent",
    "camera",
)
PRODUCE = ("apples", "cherries", "grapes", "tomatoes", "pears", "plums", "carrots")
UNIT_GOODS = ("pencils", "notebooks", "pens", "erasers", "folders", "candles")
VARS = ("x", "y", "t", "n", "m", "a", "b", "k")


def two_names(rng) -> tuple[str, str]:
    """Two different first names."""
    first, second = rng.sample(NAMES, 2)
    return first, second


def numbers_in(steps: Sequence[str]) -> list[str]:
    """Signed integers written in ``steps`` (a minus glued to its digits)."""
    return re.findall(r"(?<![\d.])-?\d+(?![\d.])", " ".join(steps))


def draw_fraction(rng) -> Fraction:
    """A proper fraction with a denominator from 2 to 12."""
    den = rng.randint(2, 12)
    return Fraction(rng.randint(1, den - 1), den)
