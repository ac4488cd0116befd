import json
import re
import time
from dataclasses import asdict

import pytest

from pipelines.common.math_check import extract_boxed, is_equiv
from pipelines.domains import PairDraft, SftDraft, domain_module
from pipelines.domains import math as math_domain

COUNTS = {"train": 50, "test": 20}
SFT = 30


@pytest.fixture(scope="module")
def generated():
    return math_domain.generate(COUNTS, SFT, seed=0)


def _all_pairs(splits):
    return [d for drafts in splits.values() for d in drafts]


def test_counts_and_types(generated):
    splits, sft = generated
    assert set(splits) == set(COUNTS)
    for name, count in COUNTS.items():
        assert len(splits[name]) == count
        assert all(isinstance(d, PairDraft) for d in splits[name])
    assert len(sft) == SFT
    assert all(isinstance(d, SftDraft) for d in sft)
    assert domain_module("math") is math_domain


def test_ids_unique_and_json_able(generated):
    splits, sft = generated
    ids = [d.id for d in _all_pairs(splits)] + [d.id for d in sft]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"math-(train|test|sft)-\d{5}", i) for i in ids)
    for draft in [*_all_pairs(splits), *sft]:
        json.dumps(asdict(draft))


def test_chosen_verify_and_rejected_fail_from_task_only(generated):
    splits, sft = generated
    pairs = _all_pairs(splits)
    tasks = [json.loads(json.dumps(d.task)) for d in pairs]
    chosen = math_domain.verify_many(
        [(t, d.chosen) for t, d in zip(tasks, pairs, strict=True)]
    )
    rejected = math_domain.verify_many(
        [(t, d.rejected) for t, d in zip(tasks, pairs, strict=True)]
    )
    assert all(chosen)
    assert not any(rejected)
    assert all(math_domain.verify_many([(d.task, d.response) for d in sft]))
    for d in pairs:
        assert math_domain.format_ok(d.chosen) and math_domain.format_ok(d.rejected)
        assert d.chosen != d.rejected
        assert d.meta["family"] == d.subset and d.meta["slip"]


def test_boxed_answers_really_differ(generated):
    splits, _ = generated
    for d in _all_pairs(splits):
        good = extract_boxed(d.chosen)
        bad = extract_boxed(d.rejected)
        assert is_equiv(good, d.task["reference"])
        assert not is_equiv(bad, d.task["reference"])
        assert not is_equiv(bad, good)


def test_prompts_disjoint_across_splits_and_sft(generated):
    splits, sft = generated
    prompts = [d.prompt for d in _all_pairs(splits)] + [d.prompt for d in sft]
    assert len(prompts) == len(set(prompts))
    for d in _all_pairs(splits):
        assert "\\boxed{}" in d.prompt


def test_same_seed_identical_other_seed_different(generated):
    again = math_domain.generate(COUNTS, SFT, seed=0)
    assert again == generated
    other_splits, other_sft = math_domain.generate(COUNTS, SFT, seed=1)
    splits, sft = generated
    assert [d.prompt for d in other_splits["train"]] != [
        d.prompt for d in splits["train"]
    ]
    assert [d.prompt for d in other_sft] != [d.prompt for d in sft]


def test_split_order_does_not_matter(generated):
    reordered = math_domain.generate({"test": 20, "train": 50}, SFT, seed=0)
    assert reordered == generated


def test_spurious_prefix_and_padding_still_verify(generated):
    splits, _ = generated
    pad = (
        "\n\nI hope this helps! Let me know if you would like me to explain any "
        "step in more detail, or to work through a similar example."
    )
    items = []
    for d in splits["test"]:
        items.append((d.task, "Certainly! Happy to help. " + d.chosen + pad))
        items.append((d.task, "Certainly! " + d.rejected + pad))
    verdicts = math_domain.verify_many(items)
    assert verdicts == [True, False] * len(splits["test"])


def test_unboxed_or_broken_responses_fail(generated):
    splits, _ = generated
    d = splits["train"][0]
    answer = extract_boxed(d.chosen)
    unboxed = d.chosen.replace(f"\\boxed{{{answer}}}", answer)
    assert not math_domain.format_ok(unboxed)
    assert not math_domain.format_ok("the answer is \\boxed{3")
    assert math_domain.format_ok("the answer is \\boxed{\\frac{1}{2}}")
    assert math_domain.verify_many([(d.task, "I don't know.")]) == [False]


def test_all_families_and_alternative_forms_appear(generated):
    splits, sft = generated
    for name in COUNTS:
        assert {d.subset for d in splits[name]} == set(math_domain.FAMILIES)
    assert {d.subset for d in sft} == set(math_domain.FAMILIES)
    assert len(math_domain.FAMILIES) >= 8
    pairs = _all_pairs(splits)
    # the checker's equivalence matters: some chosen boxes differ from the reference
    differing = [d for d in pairs if extract_boxed(d.chosen) != d.task["reference"]]
    assert len(differing) >= 5
    assert len({d.meta["slip"] for d in pairs}) >= 8


def test_parallel_verification_matches_serial(generated, monkeypatch):
    splits, _ = generated
    monkeypatch.setattr(math_domain, "_PARALLEL_MIN_ITEMS", 1)
    items = [(d.task, r) for d in splits["test"] for r in (d.chosen, d.rejected)]
    assert math_domain.verify_many(items, workers=2) == [True, False] * 20


def test_generation_speed():
    start = time.monotonic()
    splits, _ = math_domain.generate({"train": 1000}, 0, seed=7)
    assert len(splits["train"]) == 1000
    assert time.monotonic() - start < 5.0


# --------------------------------------------------------------------------
# Answer extraction mode (ALGORITHMS.md 6.1)
# --------------------------------------------------------------------------


def test_extraction_modes_give_different_verdicts_on_a_nested_box():
    task = {"reference": "1/2"}
    response = r"Half of it is left, so the answer is $\boxed{\frac{1}{2}}$."
    # balanced reads \frac{1}{2} = 1/2; the paper's regex reads "\frac{1",
    # which does not parse: incorrect
    assert math_domain.verify_many([(task, response)]) == [True]
    assert math_domain.verify_many([(task, response)], mode="balanced") == [True]
    assert math_domain.verify_many([(task, response)], mode="regex") == [False]


def test_regex_mode_cuts_the_reference_like_the_paper():
    # The paper cuts response and reference solution at their first "}": two
    # fractions with the same numerator then look equal, as in its data.
    task = {"reference": r"\frac{3}{4}"}
    same_numerator = r"So the answer is \boxed{\frac{3}{5}}."
    assert math_domain.verify_many([(task, same_numerator)], mode="regex") == [True]
    assert math_domain.verify_many([(task, same_numerator)]) == [False]
    # both sides cut alike: the reference's own form still verifies
    canonical = r"So the answer is \boxed{\frac{3}{4}}."
    assert math_domain.verify_many([(task, canonical)], mode="regex") == [True]


def test_format_ok_follows_the_mode():
    unclosed = r"the answer is \boxed{\frac{1}{2}"
    assert not math_domain.format_ok(unclosed)
    assert math_domain.format_ok(unclosed, mode="regex")  # "\frac{1" matched
    assert not math_domain.format_ok(r"\boxed{12", mode="regex")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="regexp"):
        math_domain.verify_many([({"reference": "1"}, r"\boxed{1}")], mode="regexp")
    with pytest.raises(ValueError, match="regexp"):
        math_domain.generate({"train": 2}, 0, seed=0, mode="regexp")


def test_generated_in_regex_mode_reverifies_in_regex_mode():
    splits, sft = math_domain.generate(COUNTS, SFT, seed=0, mode="regex")
    pairs = _all_pairs(splits)
    for name, count in COUNTS.items():
        assert len(splits[name]) == count
    chosen = math_domain.verify_many([(d.task, d.chosen) for d in pairs], mode="regex")
    rejected = math_domain.verify_many(
        [(d.task, d.rejected) for d in pairs], mode="regex"
    )
    assert all(chosen) and not any(rejected)
    assert all(
        math_domain.verify_many([(d.task, d.response) for d in sft], mode="regex")
    )
    # no unreduced fraction survives: the regex reads \frac{6}{8} as "\frac{6",
    # which is not the reference's "\frac{3"
    assert not any(d.meta["answer_form"] == "unreduced" for d in pairs)
    balanced, _ = math_domain.generate(COUNTS, SFT, seed=0)
    assert any(d.meta["answer_form"] == "unreduced" for d in _all_pairs(balanced))


# --------------------------------------------------------------------------
# The checker's guards and deadline never touch the domain's own answers
# --------------------------------------------------------------------------


def test_guards_accept_every_generated_answer():
    from pipelines.common.math_check import normalize_answer
    from pipelines.common.math_check.guards import refusal

    answers = set()
    for seed in range(3):
        splits, sft = math_domain.generate({"train": 400}, 100, seed=seed)
        for d in _all_pairs(splits):
            answers |= {d.task["reference"], extract_boxed(d.chosen)}
            answers.add(extract_boxed(d.rejected))
        answers |= {extract_boxed(d.response) for d in sft}
    assert len(answers) > 500
    refused = [a for a in answers if refusal(normalize_answer(a)) is not None]
    assert refused == []


def test_verification_of_generated_data_needs_no_sympy():
    from pipelines.common.math_check import check_stats

    splits, sft = math_domain.generate({"train": 1000, "test": 200}, 200, seed=3)
    pairs = _all_pairs(splits)
    items = [(d.task, r) for d in pairs for r in (d.chosen, d.rejected)]
    before = check_stats()
    verdicts = math_domain.verify_many(items)
    assert verdicts == [True, False] * len(pairs)
    after = check_stats()
    for event in ("compared", "refused", "timed_out", "errors", "too_long"):
        assert after.get(event, 0) == before.get(event, 0), event


def test_refused_answers_are_counted_and_logged(caplog):
    task = {"reference": "1"}
    items = [(task, r"\boxed{1e1000000}"), (task, r"\boxed{1}"), (task, "2^{2^{40}}")]
    with caplog.at_level("WARNING", logger="pipelines.domains.math"):
        assert math_domain.verify_many(items) == [False, True, False]
    assert "2 of 3 answers judged incorrect without a full check" in caplog.text
    assert "'refused': 2" in caplog.text
