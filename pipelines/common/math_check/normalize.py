"""Light normalisation of answer strings before they are compared."""

from __future__ import annotations

import re

_REMOVED_TOKENS = (
    "\\left",
    "\\right",
    "\\displaystyle",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "\\%",
    "%",
    "^{\\circ}",
    "^\\circ",
    "\\circ",
)
_ANSWER_PREFIX_RE = re.compile(
    r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*[:=]?\s*", re.IGNORECASE
)
_VARIABLE_PREFIX_RE = re.compile(r"^[A-Za-z]\s*=\s*(?=\S)")
_TRAILING_TEXT_RE = re.compile(r"^(.*?\S)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}$")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LATEX_THOUSANDS_RE = re.compile(r"(?<=\d)\{,\}(?=\d{3}(?!\d))")
_LEADING_POINT_RE = re.compile(r"(?<![\d.])\.(?=\d)")
# A whitespace run, with the LaTeX command it may end (``\pi r``).
_SPACE_RUN_RE = re.compile(r"(\\[A-Za-z]+)?\s+")


def _drop_spaces(s: str) -> str:
    r"""Remove whitespace, keeping one space where it ends a LaTeX command.

    One regex pass, linear in ``len(s)``: the space in ``\pi r`` must stay
    (``\pir`` is another command), every other space goes.
    """

    def keep_command_space(match: re.Match[str]) -> str:
        command = match.group(1) or ""
        after = s[match.end() : match.end() + 1]
        return f"{command} " if command and after.isalpha() else command

    return _SPACE_RUN_RE.sub(keep_command_space, s)


def normalize_answer(s: str) -> str:
    r"""Lightly normalise an answer string before comparison.

    Strips dollar signs, whitespace, ``\left``/``\right``, thin spaces,
    degree marks, percent signs, a trailing period, a leading ``answer:`` or
    ``x =``, and trailing ``\text{unit}``; maps ``\dfrac``/``\tfrac`` to
    ``\frac``; removes thousands separators only in the unambiguous form
    ``1,234,567`` (or LaTeX ``1{,}234``); writes ``.5`` as ``0.5``. Linear in
    the length of ``s``.

    Args:
        s: a raw answer.

    Returns:
        The normalised answer (possibly empty).
    """
    s = s.strip().replace("\\$", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for token in _REMOVED_TOKENS:
        s = s.replace(token, "")
    s = s.strip()
    s = _ANSWER_PREFIX_RE.sub("", s)
    if s.count("=") == 1:
        s = _VARIABLE_PREFIX_RE.sub("", s)
    trailing = _TRAILING_TEXT_RE.match(s)
    if trailing and re.search(r"[\d}]$", trailing.group(1)):
        s = trailing.group(1)
    s = _TEXT_WRAP_RE.sub(r"\1", s)
    s = _drop_spaces(s.strip())
    s = s.rstrip(".")
    s = _LATEX_THOUSANDS_RE.sub("", s)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    s = _LEADING_POINT_RE.sub("0.", s)
    return s
