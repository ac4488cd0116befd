import contextlib
import signal
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipelines.common.math_check import (
    answer_of,
    check_response,
    extract_boxed,
    is_equiv,
    normalize_answer,
)


@contextlib.contextmanager
def _fails_after(seconds: float):
    """Raise in the main thread after ``seconds`` (pure Python code only)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


EQUIVALENT = [
    (r"\frac{3}{4}", "0.75"),
    (r"\frac{6}{8}", r"\frac{3}{4}"),
    (r"\dfrac{1}{2}", "0.5"),
    (r"\tfrac{5}{10}", r"\frac{1}{2}"),
    ("3/4", r"\frac{3}{4}"),
    (r"-\frac{1}{2}", "-0.5"),
    (r"\frac{-3}{6}", r"-\frac{1}{2}"),
    ("-7", "-7.0"),
    ("2x+1", "1+2x"),
    ("2x + 1", "1 + 2 x"),
    (r"x^2+2x+1", "(x+1)^2"),
    (r"\frac{x}{2}", "0.5x"),
    (r"3(x+2)-(x+5)", "2x+1"),
    (r"\sqrt{4}", "2"),
    (r"\sqrt{8}", r"2\sqrt{2}"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    ("sqrt(9)", "3"),
    ("1,000", "1000"),
    (r"$12$", "12"),
    (r"x = 5", "5"),
    (r"50\%", "50"),
    (r"\left(3\right)", "3"),
    (r"2 \cdot 3", "6"),
    ("10.", "10"),
    (r"\pi r^2", r"r^2\pi"),
]

NOT_EQUIVALENT = [
    (r"\frac{3}{4}", "0.76"),
    (r"\frac{3}{4}", r"\frac{4}{3}"),
    (r"\frac{1}{3}", "0.333"),
    ("-3", "3"),
    (r"-\frac{1}{2}", r"\frac{1}{2}"),
    ("2x+1", "2x-1"),
    ("2x+1", "2y+1"),
    ("x^2", "x^3"),
    (r"x^2+2x+1", "(x-1)^2"),
    (r"\sqrt{4}", "4"),
    (r"\sqrt{2}", "1.41"),
    ("12", "21"),
    ("1,2", "12"),
    ("100", "10"),
    (r"50\%", "0.5"),
    ("0", "1"),
    (r"\pi", "3.14"),
    ("x", "1"),
    (r"\frac{1}{0}", r"\frac{2}{0}"),
    ("3.5", "35"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_pairs(a, b):
    assert is_equiv(a, b)
    assert is_equiv(b, a)


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_non_equivalent_pairs(a, b):
    assert not is_equiv(a, b)
    assert not is_equiv(b, a)


def test_extract_nested_box_balanced_and_regex():
    text = r"so we get \boxed{\frac{1}{2}} and later \boxed{7}"
    assert extract_boxed(text) == r"\frac{1}{2}"
    assert extract_boxed(text, mode="regex") == r"\frac{1"
    assert check_response(text, "0.5")
    assert not check_response(text, "0.5", mode="regex")


def test_extract_variants():
    assert extract_boxed(r"\boxed {42}") == "42"
    assert extract_boxed(r"\fbox{x+1}") == "x+1"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_boxed(r"first \boxed{3} then \boxed{4}") == "3"
    assert extract_boxed(r"\boxed{}") == ""
    with pytest.raises(ValueError):
        extract_boxed("x", mode="other")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "}", "{", "\n", "a", "\\"]), max_size=14))
def test_regex_mode_is_the_papers_regex(parts):
    import re

    text = "".join(parts)
    match = re.search(r"\\boxed{(.*?)}", text)  # RD211/eth-dl-rewards
    assert extract_boxed(text, mode="regex") == (match.group(1) if match else None)


def test_regex_mode_is_linear_on_unclosed_boxes():
    text = "\\boxed{" * 200_000 + "\n" + r"\boxed{7}"
    start = time.monotonic()
    with _fails_after(20):  # the regex itself needs minutes here
        assert extract_boxed(text, mode="regex") == "7"
    assert time.monotonic() - start < 1.0


def test_no_box_and_unclosed_box():
    assert extract_boxed("the answer is 5") is None
    assert answer_of("  the answer is 5 \n") == "the answer is 5"
    assert extract_boxed(r"so \boxed{\frac{1}{2}") is None
    assert extract_boxed(r"so \boxed{12") is None
    assert extract_boxed(r"so \boxed{12", mode="regex") is None
    assert check_response("42", "42")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"$\dfrac{1}{2}$", r"\frac{1}{2}"),
        (r"\left( x \right)", "(x)"),
        ("1,234,567", "1234567"),
        ("1{,}000", "1000"),
        ("12.", "12"),
        (r"45^\circ", "45"),
        (r"25\%", "25"),
        ("Answer: 7", "7"),
        ("y = 2x + 1", "2x+1"),
        (r"5 \text{ cm}", "5"),
        (".5", "0.5"),
        (r"\pi r", r"\pi r"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        (r"\frac{", "1"),
        ("}}}{", "1"),
        ("", ""),
        ("   ", "0"),
        ("1" * 400, "1" * 399 + "2"),
        ("(" * 500, "1"),
        (r"\frac{1}{2}" + "+1" * 200, "1"),
        (r"10^{10^{10}}", "5"),
        (r"2^{2^{40}}", "2"),
        ("9**9**9", "1"),
        (r"(10^{10})!", "1"),
        (r"\sqrt{", r"\sqrt{"[:-1]),
        ("__import__('os')", "0"),
    ],
)
def test_garbage_is_false_without_raising(pred, ref):
    start = time.monotonic()
    assert is_equiv(pred, ref) is False
    assert time.monotonic() - start < 3.0


def test_empty_box_is_never_correct():
    assert not check_response(r"So the answer is \boxed{}.", "")
    assert not check_response(r"\boxed{}", r"\boxed{}")


def test_works_off_main_thread():
    results = {}

    def job():
        results["sqrt"] = is_equiv(r"\sqrt{16}", "4")
        results["poly"] = is_equiv(r"(x+1)^2", "x^2+2x+1")
        results["wrong"] = is_equiv(r"\sqrt{16}", "5")

    thread = threading.Thread(target=job)
    thread.start()
    thread.join(30)
    assert results == {"sqrt": True, "poly": True, "wrong": False}


def test_plain_numbers_are_fast():
    start = time.monotonic()
    for i in range(3000):
        assert is_equiv(rf"\frac{{{2 * i + 2}}}{{4}}", str((i + 1) / 2))
        assert not is_equiv(str(i), str(i + 1))
    assert time.monotonic() - start < 2.0


def latex_of(p: Fraction) -> str:
    if p.denominator == 1:
        return str(p.numerator)
    sign = "-" if p < 0 else ""
    return rf"{sign}\frac{{{abs(p.numerator)}}}{{{p.denominator}}}"


def _terminates(den: int) -> bool:
    for f in (2, 5):
        while den % f == 0:
            den //= f
    return den == 1


def other_form_of(p: Fraction, k: int, style: int) -> str:
    """An equivalent but different spelling of ``p``."""
    if _terminates(p.denominator) and style == 0:
        digits = 0
        while (p * 10**digits).denominator != 1:
            digits += 1
        return f"{float(p):.{digits}f}" if digits else f"{p.numerator}.0"
    num, den = k * p.numerator, k * p.denominator
    if style == 1:
        return f"{num}/{den}"
    if style == 2:
        return rf"\dfrac{{{num}}}{{{den}}}"
    return rf"\frac{{{num}}}{{{den}}}"


fractions = st.fractions(min_value=-100, max_value=100, max_denominator=1000)


@settings(max_examples=150, deadline=None)
@given(p=fractions, k=st.integers(1, 9), style=st.integers(0, 3))
def test_property_same_value_is_equivalent(p, k, style):
    assert is_equiv(latex_of(p), other_form_of(p, k, style))


@settings(max_examples=150, deadline=None)
@given(p=fractions, q=fractions, k=st.integers(1, 9), style=st.integers(0, 3))
def test_property_different_values_are_not_equivalent(p, q, k, style):
    assume(p != q)
    assert not is_equiv(latex_of(p), other_form_of(q, k, style))


# --------------------------------------------------------------------------
# Normalisation in linear time, same result as the old quadratic loop
# --------------------------------------------------------------------------


def _drop_spaces_oracle(s: str) -> str:
    """The pre-change definition: keep one space after a command before a letter."""
    import re

    out, pos = [], 0
    for match in re.finditer(r"\s+", s):
        out.append(s[pos : match.start()])
        before, after = s[: match.start()], s[match.end() : match.end() + 1]
        if after.isalpha() and re.search(r"\\[A-Za-z]+$", before):
            out.append(" ")
        pos = match.end()
    out.append(s[pos:])
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab\\ \t\n{}1", max_size=40))
def test_space_dropping_matches_its_definition(s):
    from pipelines.common.math_check.normalize import _drop_spaces

    assert _drop_spaces(s) == _drop_spaces_oracle(s)


def test_normalising_a_megabyte_is_fast():
    megabyte = 1_000_000
    start = time.monotonic()
    with _fails_after(20):  # it took 70-80 s before (quadratic)
        assert normalize_answer("a " * (megabyte // 2)) == "a" * (megabyte // 2)
        assert normalize_answer(r"\pi " * (megabyte // 4)) == r"\pi" * (megabyte // 4)
    assert time.monotonic() - start < 3.0


def test_ordinary_answers_with_exponents_still_compare():
    assert is_equiv("10^{3}", "1000")
    assert is_equiv("2^{2^{3}}", "256")
    assert is_equiv("1000!", "1000!")
    assert is_equiv(r"6.02\times10^{23}", "602000000000000000000000")
    assert not is_equiv("2^{10}", "1000")
