"""Arithmetic problem families: sums, multi-step totals, fractions, percents..."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

from pipelines.domains.math.problem import (
    BAKED,
    COLLECTIBLES,
    FOODS,
    ITEMS,
    NAMES,
    PRODUCE,
    Problem,
    Value,
    draw_fraction,
    frac_tex,
    num_tex,
    numbers_in,
    round2_tex,
    two_names,
)


def _arith_add(rng) -> Problem:
    a, b = rng.randint(12, 480), rng.randint(12, 480)
    c = rng.randint(5, a + b - 1)
    name, other = two_names(rng)
    obj = rng.choice(COLLECTIBLES)
    text = rng.choice(
        (
            f"{name} has {a} {obj}. {other} gives {name} {b} more, and then "
            f"{name} gives {c} away to friends. How many {obj} does {name} have now?",
            f"A box holds {a} {obj}. {name} adds {b} {obj} to the box and later "
            f"takes out {c}. How many {obj} are in the box now?",
            f"At the start of the week {name} had {a} {obj}. During the week "
            f"{name} collected {b} more but lost {c}. How many {obj} does {name} "
            "have at the end of the week?",
        )
    )
    total = a + b

    def steps(s1: int, last: str | None) -> list[str]:
        out = [
            f"Start with {a} {obj}.",
            f"Adding the {b} new ones gives ${a} + {b} = {s1}$.",
        ]
        if last:
            out.append(last)
        return out

    carry = total + rng.choice((10, -10))
    slips = [
        (
            "carry-error",
            steps(carry, f"Removing {c} leaves ${carry} - {c} = {carry - c}$."),
            Fraction(carry - c),
        ),
        (
            "wrong-operation",
            steps(total, f"Then the {c} make ${total} + {c} = {total + c}$."),
            Fraction(total + c),
        ),
        ("forgot-step", steps(total, None), Fraction(total)),
    ]
    good = steps(total, f"Removing {c} leaves ${total} - {c} = {total - c}$.")
    return Problem(text, Fraction(total - c), "int", good, slips)


def _arith_multistep(rng) -> Problem:
    n, k = rng.randint(3, 25), rng.randint(4, 24)
    m = rng.randint(1, n * k - 1)
    p = rng.randint(5, 60)
    name = rng.choice(NAMES)
    style = rng.randrange(3)
    if style == 0:
        goods = rng.choice(BAKED)
        text = (
            f"A bakery bakes {n} trays of {goods} with {k} {goods} on each tray. "
            f"It sells {m} {goods} in the morning and then bakes {p} more. How "
            f"many {goods} does the bakery have now?"
        )
    elif style == 1:
        goods = "books"
        text = (
            f"A library receives {n} boxes of books, each holding {k} books. It "
            f"lends out {m} of them and then {p} more are donated. How many of "
            "these books does the library have now?"
        )
    else:
        goods = "plants"
        text = (
            f"{name} plants {n} rows of lettuce with {k} plants in each row. "
            f"Rabbits eat {m} plants, and {name} then plants {p} more. How many "
            "lettuce plants are in the garden now?"
        )
    nk = n * k

    def steps(
        first: str, start: int, after: int, after_op: str, final: int, last: bool
    ) -> list[str]:
        out = [
            f"At first there are {first} = {start}$ {goods}.",
            f"After the {m} are gone: ${start} {after_op} {m} = {after}$.",
        ]
        if last:
            out.append(f"Adding the {p} new ones: ${after} + {p} = {final}$.")
        return out

    prod = f"${n} \\times {k}"
    off = nk + rng.choice((10, -10))
    slips = [
        (
            "forgot-step",
            steps(prod, nk, nk - m, "-", nk - m, False),
            Fraction(nk - m),
        ),
        (
            "wrong-operation",
            steps(f"${n} + {k}", n + k, n + k - m, "-", n + k - m + p, True),
            Fraction(n + k - m + p),
        ),
        (
            "carry-error",
            steps(prod, off, off - m, "-", off - m + p, True),
            Fraction(off - m + p),
        ),
        (
            "sign-error",
            steps(prod, nk, nk + m, "+", nk + m + p, True),
            Fraction(nk + m + p),
        ),
    ]
    # keep the slips whose running totals stay non-negative, as a solver's would
    slips = [s for s in slips if all(int(x) >= 0 for x in numbers_in(s[1]))]
    good = steps(prod, nk, nk - m, "-", nk - m + p, True)
    return Problem(text, Fraction(nk - m + p), "int", good, slips)


def _fraction(rng) -> Problem:
    name, other = two_names(rng)
    food = rng.choice(FOODS)
    while True:
        x, y = draw_fraction(rng), draw_fraction(rng)
        if x + y < 1:
            break
    style = rng.randrange(3)
    if style == 2:
        return _fraction_of_fraction(name, other, food, x, y)
    return _fraction_sum(name, other, food, x, y, left=style == 1)


def _fraction_sum(
    name: str, other: str, food: str, x: Fraction, y: Fraction, *, left: bool
) -> Problem:
    """Two people eat ``x`` and ``y`` of a food: how much together, or left."""
    fx, fy = frac_tex(x), frac_tex(y)
    common = x.denominator * y.denominator
    ux = x.numerator * y.denominator
    uy = y.numerator * x.denominator
    s = x + y
    unreduced = rf"\frac{{{ux}}}{{{common}}} + \frac{{{uy}}}{{{common}}}"
    add_step = (
        f"Over a common denominator: ${fx} + {fy} = {unreduced} = "
        rf"\frac{{{ux + uy}}}{{{common}}} = {frac_tex(s)}$."
    )
    across = Fraction(x.numerator + y.numerator, x.denominator + y.denominator)
    across_step = (
        f"Adding the numerators and the denominators: ${fx} + {fy} = "
        rf"\frac{{{x.numerator + y.numerator}}}{{{x.denominator + y.denominator}}}"
        f" = {frac_tex(across)}$."
    )
    if not left:
        text = (
            f"{name} ate ${fx}$ of a {food} and {other} ate ${fy}$ of it. What "
            f"fraction of the {food} did they eat altogether?"
        )
        answer = s
        good = [add_step]
        slips = [
            ("add-across", [across_step], across),
            (
                "inverted-fraction",
                [add_step, f"Flipping the result gives ${frac_tex(1 / s)}$."],
                1 / s,
            ),
        ]
    else:
        text = (
            f"{name} ate ${fx}$ of a {food} and {other} ate ${fy}$ of it. What "
            f"fraction of the {food} is left?"
        )
        answer = 1 - s
        left = f"What is left is $1 - {frac_tex(s)} = {frac_tex(1 - s)}$."
        good = [add_step, left]
        slips = [
            ("forgot-step", [add_step], s),
            (
                "add-across",
                [
                    across_step,
                    f"What is left is $1 - {frac_tex(across)}"
                    f" = {frac_tex(1 - across)}$.",
                ],
                1 - across,
            ),
        ]
    return Problem(text, answer, "frac", good, slips)


def _fraction_of_fraction(
    name: str, other: str, food: str, x: Fraction, y: Fraction
) -> Problem:
    """Someone gives away ``y`` of a piece that is ``x`` of a food."""
    fx, fy = frac_tex(x), frac_tex(y)
    s = x + y
    text = (
        f"{name} had ${fx}$ of a {food} and gave ${fy}$ of that piece to "
        f"{other}. What fraction of the whole {food} did {other} get?"
    )
    answer = x * y
    good = [
        f"We need ${fy}$ of ${fx}$, that is ${fy} \\times {fx} = {frac_tex(x * y)}$."
    ]
    slips = [
        (
            "wrong-operation",
            [f"We need ${fy}$ of ${fx}$, that is ${fy} + {fx} = {frac_tex(s)}$."],
            s,
        ),
        (
            "inverted-fraction",
            [
                f"We need ${fy}$ of ${fx}$, that is ${fx} \\div {fy} = "
                f"{frac_tex(x / y)}$."
            ],
            x / y,
        ),
    ]
    return Problem(text, answer, "frac", good, slips)


def _percent(rng) -> Problem:
    item = rng.choice(ITEMS)
    if rng.random() < 0.5:
        price = 10 * rng.randint(2, 60)
        rate = 5 * rng.randint(1, 15)
        amount = Fraction(price * rate, 100)
        tax = rng.random() < 0.35
        if tax:
            text = (
                f"A {item} costs {price} dollars before tax, and the sales tax is "
                f"{rate}%. What is the total cost in dollars?"
            )
            answer, word, op = price + amount, "tax", "+"
            wrong_op, wrong = "-", price - amount
        else:
            text = (
                f"A {item} normally costs {price} dollars. In a sale its price is "
                f"reduced by {rate}%. What is the sale price in dollars?"
            )
            answer, word, op = price - amount, "discount", "-"
            wrong_op, wrong = "+", price + amount

        def steps(part: Fraction, sign: str, final: Fraction, den: int = 100):
            return [
                f"The {word} is {rate}% of {price}: $\\frac{{{rate}}}{{{den}}} "
                f"\\times {price} = {num_tex(part)}$.",
                f"The price becomes ${price} {sign} {num_tex(part)}"
                f" = {num_tex(final)}$.",
            ]

        shifted = Fraction(price * rate, 10)
        shifted_final = price + shifted if tax else price - shifted
        slips = [
            ("percent-of-vs-change", steps(amount, op, answer)[:1], amount),
            ("wrong-operation", steps(amount, wrong_op, wrong), wrong),
        ]
        if shifted_final > 0:
            slips.append(
                ("decimal-shift", steps(shifted, op, shifted_final, 10), shifted_final)
            )
        return Problem(text, answer, "decimal", steps(amount, op, answer), slips)
    pct = rng.choice((10, 20, 25, 30, 40, 50, 60, 75, 80, 120, 150))
    old = 20 * rng.randint(1, 25)
    up = pct >= 100 or rng.random() < 0.6
    new = old * (100 + pct) // 100 if up else old * (100 - pct) // 100
    change = abs(new - old)
    noun = rng.choice(("price of a " + item, "number of visitors to a museum"))
    verb = "increase" if up else "decrease"
    text = (
        f"The {noun} went {'up' if up else 'down'} from {old} to {new}. By what "
        f"percent did it {verb}?"
    )

    def steps(base: int, top: int, final: Fraction) -> list[str]:
        return [
            f"The change is ${max(new, old)} - {min(new, old)} = {change}$.",
            f"As a percent of {base}: $\\frac{{{top}}}{{{base}}} \\times 100 = "
            f"{round2_tex(final)}$.",
        ]

    wrong_base = Fraction(change * 100, new) if new else None
    slips = [
        (
            "percent-of-vs-change",
            [
                f"The new value as a percent of the old one: $\\frac{{{new}}}{{{old}}}"
                f" \\times 100 = {round2_tex(Fraction(new * 100, old))}$."
            ],
            Fraction(new * 100, old),
        ),
    ]
    if wrong_base is not None:
        slips.append(("wrong-base", steps(new, change, wrong_base), wrong_base))
    good = steps(old, change, Fraction(pct))
    return Problem(text, Fraction(pct), "percent", good, slips, unit="%")


def _decimal_problem(rng) -> Problem:
    name = rng.choice(NAMES)
    if rng.random() < 0.3:
        legs = [Fraction(rng.randint(11, 150), rng.choice((10, 100))) for _ in "abc"]
        days = ("Monday", "Tuesday", "Wednesday")
        text = (
            f"{name} runs {num_tex(legs[0])} km on Monday, {num_tex(legs[1])} km on "
            f"Tuesday and {num_tex(legs[2])} km on Wednesday. How many kilometres "
            f"does {name} run in total?"
        )
        first = legs[0] + legs[1]
        total = first + legs[2]

        def steps(s1: Fraction, final: Fraction | None) -> list[str]:
            out = [
                f"{days[0]} and {days[1]}: ${num_tex(legs[0])} + {num_tex(legs[1])} "
                f"= {num_tex(s1)}$."
            ]
            if final is not None:
                out.append(
                    f"Adding {days[2]}: ${num_tex(s1)} + {num_tex(legs[2])}"
                    f" = {num_tex(final)}$."
                )
            return out

        slip_first = first + rng.choice((1, -1, Fraction(1, 10)))
        slips = [
            (
                "carry-error",
                steps(slip_first, slip_first + legs[2]),
                slip_first + legs[2],
            ),
            ("forgot-step", steps(first, None), first),
        ]
        return Problem(text, total, "decimal", steps(first, total), slips)
    weight = Fraction(rng.randint(1, 12), 2)
    price = Fraction(rng.randint(11, 99), 10)
    cost = weight * price
    bill = next(b for b in (5, 10, 20, 50, 100) if b > cost)
    if rng.random() < 0.5:
        good_name = rng.choice(PRODUCE)
        text = (
            f"{name} buys {num_tex(weight)} kg of {good_name} priced at "
            f"{num_tex(price)} dollars per kilogram and pays with a {bill}-dollar "
            f"bill. How much change does {name} get, in dollars?"
        )
    else:
        text = (
            f"Ribbon costs {num_tex(price)} dollars per metre. {name} buys "
            f"{num_tex(weight)} metres and pays with a {bill}-dollar note. How much "
            f"change does {name} receive, in dollars?"
        )

    def steps(c: Fraction, final: Fraction | None) -> list[str]:
        out = [
            f"The cost is ${num_tex(weight)} \\times {num_tex(price)} = {num_tex(c)}$."
        ]
        if final is not None:
            out.append(f"The change is ${bill} - {num_tex(c)} = {num_tex(final)}$.")
        return out

    slips: list[tuple[str, list[str], Value]] = [
        ("forgot-step", steps(cost, None), cost)
    ]
    small = cost / 10
    slips.append(("decimal-shift", steps(small, bill - small), bill - small))
    off = cost + rng.choice((1, -1))
    if 0 < off < bill:
        slips.append(("carry-error", steps(off, bill - off), bill - off))
    return Problem(text, bill - cost, "decimal", steps(cost, bill - cost), slips)


ARITH_FAMILIES: dict[str, Callable[..., Problem]] = {
    "arith-add": _arith_add,
    "arith-multistep": _arith_multistep,
    "fraction": _fraction,
    "percent": _percent,
    "decimal": _decimal_problem,
}
"""Arithmetic families: subset name -> ``(rng) -> Problem``."""
