"""Run a stage's CLI in a fresh interpreter and report which heavy modules it loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_STACK = ("torch", "transformers", "accelerate", "peft", "datasets", "deepspeed")
_PROBE = """
import json, runpy, sys
module, stack = sys.argv[1], sys.argv[2].split(",")
sys.argv = [module, *sys.argv[3:]]
code = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print(json.dumps({"exit": code, "loaded": [m for m in stack if m in sys.modules]}))
"""


def probe_stage(module: str, args: Sequence[str]) -> tuple[dict, str]:
    """``({"exit": code, "loaded": [model-stack modules]}, stderr)`` of one run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, ",".join(MODEL_STACK), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr[-3000:]
