import argparse
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from pipelines.common.cli import (
    USER_ERROR_EXIT,
    UserError,
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)

from ..conftest import ROOT

# A stage-shaped CLI: logs, then fails the way its first argument says.
SCRIPT = """
import logging, sys
from pipelines.common.cli import UserError, handle_user_errors
from pipelines.common.logs import setup_logging

logger = logging.getLogger("stage")

@handle_user_errors
def main(argv):
    setup_logging(log_file=argv[1] if len(argv) > 1 else None)
    logger.info("loading the pairs")
    if argv[0] == "user":
        raise UserError("bad.jsonl: row 3: field 'rejected': expected a string")
    if argv[0] == "multiline":
        raise UserError("odd\\nname.jsonl: row 1: field 'id': missing")
    if argv[0] == "bug":
        return {}["no-such-key"]
    return 0

raise SystemExit(main(sys.argv[1:]))
"""
MESSAGE = "error: bad.jsonl: row 3: field 'rejected': expected a string"


def run(tmp_path, *args, stderr=subprocess.PIPE):
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_user_error_on_a_screen_is_one_line_and_exit_2(tmp_path):
    res = run(tmp_path, "user")
    assert res.returncode == USER_ERROR_EXIT == 2
    lines = res.stderr.splitlines()
    assert lines[-1] == MESSAGE
    assert "Traceback" not in res.stderr
    assert "INFO stage: loading the pairs" in lines[0]  # the log still shows
    assert len(lines) == 2


def test_user_error_traceback_goes_to_the_log_file(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    res = run(tmp_path, "user", str(log))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "UserError: bad.jsonl: row 3: field 'rejected'" in text
    assert "loading the pairs" in text


def test_stderr_redirected_to_a_file_is_a_log_and_gets_the_traceback(tmp_path):
    # Snakemake runs `... > {log} 2>&1`: there the traceback belongs.
    log = tmp_path / "rule.log"
    with open(log, "w") as fh:
        res = run(tmp_path, "user", stderr=fh)
    assert res.returncode == 2
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert text.splitlines()[-1] == MESSAGE  # still ends with the one line


def test_message_with_a_line_break_stays_one_line(tmp_path):
    res = run(tmp_path, "multiline")
    assert res.stderr.splitlines()[-1] == (
        "error: odd\\nname.jsonl: row 1: field 'id': missing"
    )


def test_a_bug_keeps_its_traceback_and_exit_1(tmp_path):
    log = tmp_path / "stage.log"
    res = run(tmp_path, "bug", str(log))
    assert res.returncode == 1
    assert res.stderr.count("Traceback (most recent call last)") == 1
    assert res.stderr.splitlines()[-1] == "KeyError: 'no-such-key'"
    assert "unexpected error (a bug" in log.read_text()
    assert "KeyError: 'no-such-key'" in log.read_text()


def test_success_passes_the_status_through(tmp_path):
    res = run(tmp_path, "ok")
    assert res.returncode == 0 and "error" not in res.stderr


def test_wrapper_in_process(capsys):
    @handle_user_errors
    def main(argv=None):
        raise UserError("x.jsonl: row 1: field 'id': missing")

    assert main([]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: x.jsonl: row 1: field 'id': missing"
    )

    @handle_user_errors
    def buggy(argv=None):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        buggy([])


# ------------------------------------------------------------- flag parsing


@dataclass(frozen=True, kw_only=True)
class Cfg:
    sizes: dict[str, int] = field_help("sizes", default_factory=dict)
    source: dict | None = field_help("source", default=None)
    ns: tuple[int, ...] = field_help("ns", default=(1, 2))
    on_invalid: str = field_help("mode", choices=("error", "skip"), default="error")


def parse(*argv):
    parser = argparse.ArgumentParser(prog="stage")
    add_dataclass_args(parser, Cfg)
    return dataclass_from_args(Cfg, parser.parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--sizes", "[1, 2]"], "argument --sizes: expected a JSON object, got list"),
        (["--sizes", "null"], "argument --sizes: expected a JSON object, got null"),
        (["--source", '"a.jsonl"'], "argument --source: expected a JSON object"),
        (["--ns", '{"a": 1}'], "argument --ns: expected a JSON array, got dict"),
        (["--sizes", "{train: 3}"], "argument --sizes: not valid JSON (Expecting"),
        (["--on-invalid", "maybe"], "argument --on-invalid: invalid choice: 'maybe'"),
    ],
)
def test_bad_flags_are_usage_errors(capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_good_flags_parse():
    cfg = parse("--sizes", '{"train": 3}', "--source", "null", "--ns", "[4, 5]")
    assert cfg == Cfg(sizes={"train": 3}, source=None, ns=(4, 5))
    assert parse("--on-invalid", "skip").on_invalid == "skip"
