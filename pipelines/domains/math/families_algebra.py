"""Algebra problem families: equations, ratios, expressions, rates, counting."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

from pipelines.domains.math.problem import (
    COLLECTIBLES,
    NAMES,
    UNIT_GOODS,
    VARS,
    Problem,
    Value,
    coef_term_tex,
    num_tex,
    poly_tex,
    signed_term_tex,
    signed_tex,
    two_names,
)


def _linear_equation(rng) -> Problem:
    var = rng.choice(VARS[:4])
    a = rng.choice([n for n in range(-12, 13) if abs(n) >= 2])
    b = rng.choice([n for n in range(-30, 31) if n])
    style = rng.randrange(3)
    if style == 1:
        return _linear_both_sides(rng, var, a, b)
    return _linear_one_side(rng, var, a, b, worded=style == 2)


def _linear_both_sides(rng, var: str, a: int, b: int) -> Problem:
    """Solve ``ax + b = dx + e``."""
    d = rng.choice([n for n in range(-9, 10) if n not in (0, a)])
    e = rng.randint(-40, 40)
    text = (
        f"Solve for ${var}$: ${coef_term_tex(a, var)}{signed_tex(b)} = "
        f"{coef_term_tex(d, var)}{signed_tex(e)}$."
    )
    coef, rhs = a - d, e - b
    answer = Fraction(rhs, coef)

    def steps(k: int, r: int, final: Value | None, divide: str) -> list[str]:
        out = [
            f"Collect the ${var}$ terms on the left and the numbers on the "
            f"right: ${coef_term_tex(k, var)} = {r}$."
        ]
        if final is not None:
            out.append(f"{divide}: ${var} = {num_tex(final)}$.")
        return out

    div = f"Divide both sides by ${coef}$"
    slips = [("forgot-step", steps(coef, rhs, None, div), Fraction(rhs))]
    if a + d != 0:
        slips.append(
            (
                "sign-error",
                steps(
                    a + d,
                    rhs,
                    Fraction(rhs, a + d),
                    f"Divide both sides by ${a + d}$",
                ),
                Fraction(rhs, a + d),
            )
        )
    if rhs:
        slips.append(
            (
                "inverted-fraction",
                steps(coef, rhs, Fraction(coef, rhs), f"Divide by ${rhs}$"),
                Fraction(coef, rhs),
            )
        )
    return Problem(text, answer, "frac", steps(coef, rhs, answer, div), slips, var)


def _linear_one_side(rng, var: str, a: int, b: int, *, worded: bool) -> Problem:
    """Solve ``ax + b = c``, as an equation or as a worded number puzzle."""
    c = rng.randint(-60, 60)
    if worded:
        a, b, c = abs(a), abs(b), abs(c) + abs(b) // 2
        text = (
            f"When a number is multiplied by {a} and then {b} is added, the result "
            f"is {c}. What is the number?"
        )
        var = "x"
    else:
        text = f"Solve for ${var}$: ${coef_term_tex(a, var)}{signed_tex(b)} = {c}$."
    answer = Fraction(c - b, a)
    verb = "Subtract" if b > 0 else "Add"

    def steps(rhs: int, final: Value | None, divide: str) -> list[str]:
        out = [
            f"{verb} {abs(b)} {'from' if b > 0 else 'to'} both sides: "
            f"${coef_term_tex(a, var)} = {rhs}$."
        ]
        if final is not None:
            out.append(f"{divide}: ${var} = {num_tex(final)}$.")
        return out

    div = f"Divide both sides by ${a}$"
    slips = [
        ("sign-error", steps(c + b, Fraction(c + b, a), div), Fraction(c + b, a)),
        ("forgot-step", steps(c - b, None, div), Fraction(c - b)),
    ]
    if c != b:
        slips.append(
            (
                "inverted-fraction",
                steps(c - b, Fraction(a, c - b), f"Divide by ${c - b}$"),
                Fraction(a, c - b),
            )
        )
    return Problem(text, answer, "frac", steps(c - b, answer, div), slips, var)


def _ratio(rng) -> Problem:
    while True:
        p, q = rng.randint(1, 9), rng.randint(1, 9)
        if p != q and Fraction(p, q).denominator == q:
            break
    k = rng.randint(2, 30)
    name, other = two_names(rng)
    style = rng.randrange(3)
    if style == 2:
        flour = k * p
        text = (
            f"A recipe uses flour and sugar in the ratio {p}:{q}. If {name} uses "
            f"{flour} cups of flour, how many cups of sugar are needed?"
        )
        share = f"One part is ${flour} \\div {p} = {k}$ cups."
        good = [share, f"Sugar is {q} parts: ${q} \\times {k} = {k * q}$."]
        inv = Fraction(flour * p, q)
        slips = [
            (
                "inverted-fraction",
                [f"Sugar is ${flour} \\times \\frac{{{p}}}{{{q}}} = {num_tex(inv)}$."],
                inv,
            ),
            ("forgot-step", [share], Fraction(k)),
            (
                "additive-ratio",
                [
                    f"Sugar is {q - p} cups more than flour: ${flour} + ({q - p}) = "
                    f"{flour + q - p}$."
                ],
                Fraction(flour + q - p),
            ),
        ]
        return Problem(text, Fraction(k * q), "int", good, slips)
    total = k * (p + q)
    if style == 0:
        groups = rng.choice(
            (
                ("boys", "girls", "students", "class"),
                ("cats", "dogs", "pets", "shelter"),
                ("red", "blue", "marbles", "bag"),
            )
        )
        first, second, things, place = groups
        if first == "red":
            text = (
                f"In a {place}, the ratio of red to blue {things} is {p}:{q}. "
                f"There are {total} {things} in total. How many blue {things} "
                "are there?"
            )
        else:
            text = (
                f"In a {place}, the ratio of {first} to {second} is {p}:{q}. "
                f"There are {total} {things} in total. How many {second} are "
                "there?"
            )
    else:
        obj = rng.choice(COLLECTIBLES)
        text = (
            f"{name} and {other} share {total} {obj} in the ratio {p}:{q}. How "
            f"many {obj} does {other} get?"
        )
    parts = [
        f"There are ${p} + {q} = {p + q}$ parts.",
        f"One part is ${total} \\div {p + q} = {k}$.",
    ]
    good = [*parts, f"The second share is {q} parts: ${q} \\times {k} = {k * q}$."]
    slips = [
        (
            "wrong-part",
            [*parts, f"The share is {p} parts: ${p} \\times {k} = {k * p}$."],
            Fraction(k * p),
        ),
        ("forgot-step", parts, Fraction(k)),
    ]
    return Problem(text, Fraction(k * q), "int", good, slips)


def _expression(rng) -> Problem:
    var = rng.choice(VARS)
    style = rng.randrange(3)
    if style == 0:
        return _expression_distribute(rng, var)
    if style == 1:
        return _expression_expand(rng, var)
    return _expression_collect(rng, var)


def _expression_distribute(rng, var: str) -> Problem:
    """Simplify ``a(x + b) - c(x - d)``."""
    a, c = rng.sample(range(2, 10), 2)
    b, d = rng.randint(1, 12), rng.randint(1, 12)
    text = f"Simplify ${a}({var} + {b}) - {c}({var} - {d})$."
    answer = {1: a - c, 0: a * b + c * d}

    def steps(first: str, second: str, result: dict[int, int]) -> list[str]:
        return [
            f"Distribute: ${a}({var} + {b}) = {first}$ and "
            f"$-{c}({var} - {d}) = {second}$.",
            f"Combine like terms: ${poly_tex(result, var)}$.",
        ]

    plus = f"{a}{var} + {a * b}"
    good = steps(plus, f"-{c}{var} + {c * d}", answer)
    slips = [
        (
            "sign-error",
            steps(plus, f"-{c}{var} - {c * d}", {1: a - c, 0: a * b - c * d}),
            {1: a - c, 0: a * b - c * d},
        ),
        (
            "forgot-step",
            steps(f"{a}{var} + {b}", f"-{c}{var} + {c * d}", {1: a - c, 0: b + c * d}),
            {1: a - c, 0: b + c * d},
        ),
    ]
    return Problem(text, answer, "expr", good, slips, var)


def _expression_expand(rng, var: str) -> Problem:
    """Expand ``(x + p)(x + q)``."""
    p = rng.choice([n for n in range(-9, 10) if n])
    q = rng.choice([n for n in range(-9, 10) if n])
    text = f"Expand $({var}{signed_tex(p)})({var}{signed_tex(q)})$."
    answer = {2: 1, 1: p + q, 0: p * q}

    def foil(const: int) -> str:
        return (
            f"Multiply out: ${var}^2{signed_term_tex(q, var)}"
            f"{signed_term_tex(p, var)}{signed_tex(const)}$."
        )

    def combine(result: dict[int, int]) -> str:
        return f"Combine like terms: ${poly_tex(result, var)}$."

    no_middle = {2: 1, 0: p * q}
    flipped = {2: 1, 1: p + q, 0: -p * q}
    slips = [
        (
            "forgot-step",
            [
                f"Multiply the first terms and the last terms: "
                f"${poly_tex(no_middle, var)}$."
            ],
            no_middle,
        ),
        ("sign-error", [foil(-p * q), combine(flipped)], flipped),
    ]
    good = [foil(p * q), combine(answer)]
    return Problem(text, answer, "expr", good, slips, var)


def _expression_collect(rng, var: str) -> Problem:
    """Simplify ``ax + b + cx - d``."""
    a, c = rng.randint(2, 15), rng.randint(2, 15)
    b, d = rng.randint(1, 30), rng.randint(1, 30)
    text = f"Simplify ${a}{var} + {b} + {c}{var} - {d}$."
    answer = {1: a + c, 0: b - d}

    def steps(coef: str, const: str, result: dict[int, int]) -> list[str]:
        return [
            f"The ${var}$ terms give {coef} and the numbers give {const}.",
            f"Together: ${poly_tex(result, var)}$.",
        ]

    good = steps(f"${a + c}{var}$", f"${b} - {d} = {b - d}$", answer)
    slips = [
        (
            "sign-error",
            steps(f"${a + c}{var}$", f"${b} + {d} = {b + d}$", {1: a + c, 0: b + d}),
            {1: a + c, 0: b + d},
        ),
        (
            "wrong-operation",
            steps(
                f"${a} \\times {c} = {a * c}$ times ${var}$",
                f"${b} - {d} = {b - d}$",
                {1: a * c, 0: b - d},
            ),
            {1: a * c, 0: b - d},
        ),
    ]
    return Problem(text, answer, "expr", good, slips, var)


def _unit_rate(rng) -> Problem:
    style = rng.randrange(3)
    if style == 0:
        n = rng.randint(2, 12)
        m = rng.choice([v for v in range(2, 25) if v != n])
        unit = Fraction(5 * rng.randint(2, 100), 100)
        goods = rng.choice(UNIT_GOODS)
        cost = n * unit
        text = (
            f"{n} {goods} cost {num_tex(cost)} dollars. At the same price, how much "
            f"do {m} {goods} cost, in dollars?"
        )
        first = f"One costs ${num_tex(cost)} \\div {n} = {num_tex(unit)}$ dollars."
        inv = Fraction(n, 1) / cost

        def times(u: Fraction, count: int) -> str:
            return (
                f"So {count} cost ${count} \\times {num_tex(u)}"
                f" = {num_tex(count * u)}$."
            )

        slips = [
            ("forgot-step", [first], unit),
            (
                "inverted-rate",
                [
                    f"The rate is ${n} \\div {num_tex(cost)} = {num_tex(inv)}$.",
                    f"So {m} cost ${m} \\times {num_tex(inv)} = {num_tex(m * inv)}$.",
                ],
                m * inv,
            ),
            ("off-by-one", [first, times(unit, m - 1)], (m - 1) * unit),
        ]
        return Problem(text, m * unit, "decimal", [first, times(unit, m)], slips)
    if style == 1:
        speed, hours = rng.randint(30, 110), rng.randint(2, 6)
        later = rng.choice([h for h in range(2, 10) if h != hours])
        dist = speed * hours
        text = (
            f"A car travels {dist} km in {hours} hours. At the same speed, how far "
            f"does it travel in {later} hours, in km?"
        )
        rate, per = speed, "km per hour"
        first = f"The speed is ${dist} \\div {hours} = {speed}$ {per}."
        count, total, label = later, speed * later, "hours"
    else:
        rate, minutes = rng.randint(3, 40), rng.randint(2, 12)
        later = rng.choice([t for t in range(5, 60) if t != minutes])
        made = rate * minutes
        text = (
            f"A machine fills {made} bottles in {minutes} minutes. Working at the "
            f"same rate, how many bottles does it fill in {later} minutes?"
        )
        per = "bottles per minute"
        first = f"The rate is ${made} \\div {minutes} = {rate}$ {per}."
        count, total, label = later, rate * later, "minutes"
    slipped = rate * count + rng.choice((10, -10))
    slips = [
        ("forgot-step", [first], Fraction(rate)),
        (
            "carry-error",
            [first, f"In {count} {label}: ${count} \\times {rate} = {slipped}$."],
            Fraction(slipped),
        ),
    ]
    good = [first, f"In {count} {label}: ${count} \\times {rate} = {total}$."]
    return Problem(text, Fraction(total), "int", good, slips)


def _counting(rng) -> Problem:
    name = rng.choice(NAMES)
    style = rng.randrange(4)
    if style == 3:
        gap = rng.randint(2, 15)
        length = gap * rng.randint(3, 60)
        text = (
            f"A straight fence is {length} metres long, with a post every {gap} "
            "metres including one at each end. How many posts are there?"
        )
        spans = length // gap
        first = f"There are ${length} \\div {gap} = {spans}$ gaps."
        good = [first, f"Posts are one more than gaps: ${spans} + 1 = {spans + 1}$."]
        slips = [("off-by-one", [first], Fraction(spans))]
        return Problem(text, Fraction(spans + 1), "int", good, slips)
    if style == 2:
        k = rng.randint(3, 13)
        lo = rng.randint(1, 200)
        hi = lo + rng.randint(3 * k, 40 * k)
        first_m = -(-lo // k) * k
        last_m = hi // k * k
        count = (last_m - first_m) // k + 1
        text = f"How many multiples of {k} are there from {lo} to {hi}, inclusive?"
        steps = [
            f"The first multiple is {first_m} and the last is {last_m}.",
            f"Their difference is ${last_m} - {first_m} = {last_m - first_m}$, "
            f"which is {(last_m - first_m) // k} steps of {k}.",
        ]
        good = [*steps, f"Counting both ends: ${count - 1} + 1 = {count}$."]
        slips = [("off-by-one", steps, Fraction(count - 1))]
        return Problem(text, Fraction(count), "int", good, slips)
    lo = rng.randint(1, 300)
    hi = lo + rng.randint(5, 400)
    if style == 0:
        text = (
            f"{name} reads a book from page {lo} to page {hi}, inclusive. How "
            f"many pages does {name} read?"
        )
    else:
        text = f"How many integers are there from {lo} to {hi}, inclusive?"
    good = [f"Counting both ends: ${hi} - {lo} + 1 = {hi - lo + 1}$."]
    slips = [
        ("off-by-one", [f"The count is ${hi} - {lo} = {hi - lo}$."], Fraction(hi - lo))
    ]
    return Problem(text, Fraction(hi - lo + 1), "int", good, slips)


ALGEBRA_FAMILIES: dict[str, Callable[..., Problem]] = {
    "linear-equation": _linear_equation,
    "ratio": _ratio,
    "expression": _expression,
    "unit-rate": _unit_rate,
    "counting": _counting,
}
"""Algebra families: subset name -> ``(rng) -> Problem``."""
