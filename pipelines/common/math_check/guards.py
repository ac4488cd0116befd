r"""Cheap refusals of answers whose sympy evaluation could run away.

sympy evaluates numerals eagerly and exactly: ``1e1000000`` becomes a float
built from a million-digit integer, ``2^{2^{2^{30}}}`` an integer with 2^(2^30)
bits, ``1000000!`` a 5.5-million-digit integer. That work happens in C, where
no Python signal can stop it. :func:`refusal` reads a normalised answer
without sympy (one regex tokeniser and a small recursive-descent reader over
at most a few hundred characters) and bounds, for every subexpression, the
number of decimal digits of its value and of its reciprocal:

* a numeral ``m e k`` (any notation: ``1e5``, ``1E+5``, ``\num{1e5}``) counts
  ``log10 |m| + k`` digits; ``|k|`` above :data:`~.limits.MAX_EXPONENT` is
  refused outright;
* a symbol, constant or unknown function counts as a value in [0.3, 3.2]
  (free symbols are evaluated at points in [0.3, 2.3));
* products add digits, quotients add the divisor's reciprocal digits, sums
  add ``log10`` of the number of terms;
* a power ``a^b`` (``a**b``) is refused when ``|b|`` may exceed
  :data:`~.limits.MAX_EXPONENT` (e.g. ``10^{1000000}``, ``2^{2^{2^{30}}}``,
  ``x^{100000}``), otherwise counts ``|b|`` times the digits of ``a``; ``n!``
  is refused when ``n`` may exceed :data:`~.limits.MAX_FACTORIAL`;
* any value with more than :data:`MAX_DIGITS` digits, and any bracket
  nesting deeper than :data:`MAX_NESTING`, is refused.

The bounds are exact for numeric towers (``2^{2^{3}}`` counts 2.41 digits,
``log10 256``), so ordinary answers pass; what the estimate cannot read
(unknown commands, stray characters) is treated as a small value, not refused:
the deadline of :mod:`.worker` remains the last line of defence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from pipelines.common.math_check.limits import MAX_EXPONENT, MAX_FACTORIAL

MAX_DIGITS = 10_000
"""Values (or reciprocals) that may have more decimal digits are refused."""

MAX_NESTING = 20
"""Deepest bracket nesting (``{``, ``(``, ``[``) accepted."""

_LOG_MAX_EXPONENT = math.log10(MAX_EXPONENT)
_LOG_MAX_FACTORIAL = math.log10(MAX_FACTORIAL)
_EPS = 1e-9

_TOKEN_RE = re.compile(
    r"""
    (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<cmd>\\[A-Za-z]+|\\.)
    | (?P<pow>\*\*|\^)
    | (?P<space>\s+)
    | (?P<char>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_SCI_EXPONENT_RE = re.compile(r"[eE]([+-]?\d+)$")
_IGNORED_COMMANDS = frozenset(
    {"\\left", "\\right", "\\displaystyle", "\\,", "\\!", "\\;", "\\:", "\\ "}
)
# Commands read as separators between terms, like + or =.
_SEPARATOR_COMMANDS = frozenset(
    {"\\pm", "\\mp", "\\le", "\\leq", "\\ge", "\\geq", "\\ne", "\\neq"}
    | {"\\lt", "\\gt", "\\approx", "\\in", "\\cup", "\\cap", "\\to"}
    | {"\\quad", "\\qquad", "\\text", "\\mbox", "\\mathrm"}
)
_PRODUCT_OPS = frozenset({"*", "\\cdot", "\\times", "\\ast"})
_DIVISION_OPS = frozenset({"/", "\\div"})
_FRAC_COMMANDS = frozenset({"\\frac", "\\dfrac", "\\tfrac", "\\cfrac"})
_BINOM_COMMANDS = frozenset({"\\binom", "\\dbinom", "\\tbinom"})
# Tokens that end a term: everything that is neither an operand nor a product
# operator (+, -, =, commas, relations, \pm, bars...).
_OPERAND_CHARS = frozenset("{([")
_CLOSERS = frozenset("})]")


class Refused(Exception):
    """An answer is refused; the message says why."""


@dataclass(frozen=True)
class _Digits:
    """Upper bounds of ``log10 |v|`` (``high``) and ``log10 |1/v|`` (``low``)."""

    high: float
    low: float


_SMALL = _Digits(0.0, 0.0)
_SYMBOL = _Digits(0.51, 0.53)  # |v| in [0.3, 3.2]: pi, e, points in [0.3, 2.3)


def _checked(d: _Digits) -> _Digits:
    if not (d.high <= MAX_DIGITS and d.low <= MAX_DIGITS):
        raise Refused(f"a value may have more than {MAX_DIGITS} digits")
    return d


def _numeral(token: str) -> _Digits:
    """Digits of a numeral such as ``12``, ``0.5`` or ``6.02e23``."""
    sci = _SCI_EXPONENT_RE.search(token)
    if sci and abs(int(sci.group(1))) > MAX_EXPONENT:
        raise Refused(f"numeral {token[:40]!r} has an exponent above {MAX_EXPONENT}")
    try:
        value = abs(Decimal(token))
    except InvalidOperation:  # pragma: no cover - the tokeniser forbids it
        return _SMALL
    if value == 0:
        return _SMALL
    log = float(value.log10())
    return _checked(_Digits(max(log, 0.0), max(-log, 0.0)))


def _product(a: _Digits, b: _Digits, *, divide: bool = False) -> _Digits:
    if divide:
        return _checked(_Digits(a.high + b.low, a.low + b.high))
    return _checked(_Digits(a.high + b.high, a.low + b.low))


def _power(base: _Digits, exponent: _Digits) -> _Digits:
    if exponent.high > _LOG_MAX_EXPONENT + _EPS:
        raise Refused(f"an exponent may exceed {MAX_EXPONENT}")
    scale = max(base.high, base.low) * 10**exponent.high
    return _checked(_Digits(scale, scale))


def _factorial(n: _Digits) -> _Digits:
    if n.high > _LOG_MAX_FACTORIAL + _EPS:
        raise Refused(f"a factorial argument may exceed {MAX_FACTORIAL}")
    bound = 10**n.high
    return _checked(_Digits(bound * math.log10(max(bound, 2.0)), 0.0))


def _binomial(n: _Digits) -> _Digits:
    if n.high > _LOG_MAX_EXPONENT + _EPS:
        raise Refused(f"a binomial argument may exceed {MAX_EXPONENT}")
    return _checked(_Digits(10**n.high * math.log10(2), 0.0))


def _tokens(s: str) -> list[str]:
    out = []
    for match in _TOKEN_RE.finditer(s):
        kind, text = match.lastgroup, match.group()
        if kind == "space" or text in _IGNORED_COMMANDS:
            continue
        out.append(text)
    return out


def _nesting(tokens: list[str]) -> int:
    depth = deepest = 0
    for token in tokens:
        if token in _OPERAND_CHARS:
            depth += 1
            deepest = max(deepest, depth)
        elif token in _CLOSERS:
            depth = max(depth - 1, 0)
    return deepest


class _Reader:
    """Recursive-descent reader computing :class:`_Digits` bounds."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def whole(self) -> _Digits:
        """Read everything, skipping stray closing brackets."""
        result = self.sum()
        while self.peek() is not None:
            self.take()  # a closer without its opener
            part = self.sum()
            result = _Digits(max(result.high, part.high), max(result.low, part.low))
        return result

    def sum(self) -> _Digits:
        """Terms joined by anything that is not a product (``+``, ``=``, ``,``...)."""
        terms: list[_Digits] = []
        while True:
            token = self.peek()
            if token is None or token in _CLOSERS:
                break
            if self._starts_operand(token):
                terms.append(self.term())
            else:
                self.take()  # a separator: +, -, =, \pm, a comma...
        if not terms:
            return _SMALL
        if len(terms) == 1:
            return terms[0]
        spread = math.log10(len(terms))
        high = max(t.high for t in terms) + spread
        # A sum may cancel: bound its reciprocal by its parts, one digit more.
        low = max(max(t.high, t.low) for t in terms) + 1.0
        return _checked(_Digits(high, low))

    def _starts_operand(self, token: str) -> bool:
        if token in _OPERAND_CHARS or token[0].isdigit() or token[0] == ".":
            return True
        if token.startswith("\\") and len(token) > 2:  # a command word
            return not (
                token in _PRODUCT_OPS
                or token in _DIVISION_OPS
                or token in _SEPARATOR_COMMANDS
            )
        return token.isalpha()

    def term(self) -> _Digits:
        """Factors joined by products, quotients or juxtaposition."""
        result = self.factor()
        while True:
            token = self.peek()
            if token is None:
                return result
            if token in _PRODUCT_OPS or token in _DIVISION_OPS:
                self.take()
                nxt = self.peek()
                if nxt is None or not self._starts_operand(nxt):
                    return result
                result = _product(result, self.factor(), divide=token in _DIVISION_OPS)
            elif self._starts_operand(token):
                result = _product(result, self.factor())
            else:
                return result

    def factor(self) -> _Digits:
        """A postfix expression raised to a (right-associative) power chain."""
        chain = [self.postfix()]
        while self.peek() == "^" or self.peek() == "**":
            self.take()
            chain.append(self.exponent())
        result = chain.pop()
        while chain:
            result = _power(chain.pop(), result)
        return result

    def exponent(self) -> _Digits:
        """The operand of ``^``/``**``: signs, then a group, numeral or atom."""
        while self.peek() in ("-", "+"):
            self.take()
        token = self.peek()
        if token is None or not self._starts_operand(token):
            return _SMALL
        return self.postfix()

    def postfix(self) -> _Digits:
        """An atom followed by factorials, subscripts and primes."""
        result = self.atom()
        while True:
            token = self.peek()
            if token == "!":
                self.take()
                result = _factorial(result)
            elif token == "_":
                self.take()
                result = _product(result, self.argument())
            elif token == "'":
                self.take()
            else:
                return result

    def argument(self) -> _Digits:
        """A command argument: a group, or one token."""
        token = self.peek()
        if token is None or token in _CLOSERS:
            return _SMALL
        if self._starts_operand(token):
            return self.atom()
        self.take()
        return _SMALL

    def atom(self) -> _Digits:
        token = self.take()
        if token in _OPERAND_CHARS:
            inner = self.sum()
            if self.peek() in _CLOSERS:
                self.take()
            return inner
        if token[0].isdigit() or token[0] == ".":
            return _numeral(token)
        if token in _FRAC_COMMANDS:
            numerator = self.argument()
            return _product(numerator, self.argument(), divide=True)
        if token == "\\sqrt":
            if self.peek() == "[":
                self.take()
                self.sum()  # the root's index only shrinks the value
                if self.peek() == "]":
                    self.take()
            return self.argument()
        if token in _BINOM_COMMANDS:
            n = self.argument()
            self.argument()
            return _binomial(n)
        if token == "\\exp":
            return _power(_SYMBOL, self.argument())
        return _SYMBOL  # a letter, constant or function name


def refusal(s: str) -> str | None:
    """Why sympy must not evaluate the normalised answer ``s``, or None.

    Args:
        s: a normalised answer (see :func:`.normalize.normalize_answer`).

    Returns:
        A short reason ("an exponent may exceed 10000"...) when the answer
        could make sympy run away, else None.
    """
    tokens = _tokens(s)
    if _nesting(tokens) > MAX_NESTING:
        return f"brackets nested deeper than {MAX_NESTING}"
    try:
        _Reader(tokens).whole()
    except Refused as refused:
        return str(refused)
    except (RecursionError, OverflowError):
        return "too deeply nested to bound"
    return None
