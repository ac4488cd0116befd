import json
import math
import os
import random
import subprocess
import sys

import pytest

from pipelines.build_prefs import (
    PADDING_SENTENCES,
    POLITE_OPENERS,
    BuildPrefsConfig,
    build_prefs,
    main,
)
from pipelines.common.records import RecordError, read_pairs
from pipelines.domains import general

from ..conftest import ROOT

DATA = ROOT / "tests" / "data" / "malformed"


def outs(tmp_path, domain="general", splits=("train", "test")):
    pairs = [tmp_path / domain / f"{s}.jsonl" for s in splits]
    return pairs, tmp_path / "sft" / domain / "train.jsonl"


def build(tmp_path, **cfg):
    pairs, sft = outs(tmp_path)
    cfg.setdefault("sizes", {"train": 30, "test": 12})
    cfg.setdefault("sft_size", 10)
    counts = build_prefs("general", pairs, sft, cfg=BuildPrefsConfig(**cfg))
    return counts, pairs, sft


def test_standard_records_with_attributes(tmp_path):
    counts, pairs, sft = build(tmp_path)
    assert counts == {"train": 30, "test": 12, "sft": 10}
    recs = read_pairs(pairs[1])  # re-validates every row
    assert len(recs) == 12
    for rec in recs:
        assert rec["domain"] == "general"
        assert rec["chosen"][:-1] == rec["prompt"] == rec["rejected"][:-1]
        assert rec["attributes"]["chosen"]["correctness"] == 1.0
        assert rec["attributes"]["rejected"]["correctness"] == 0.0
        words = len(rec["chosen"][-1]["content"].split())
        assert rec["attributes"]["chosen"]["verbosity"] == words
        assert rec["attributes"]["chosen"]["format"] == 1.0
    sft_rows = [json.loads(x) for x in sft.read_text().splitlines()]
    assert [m["role"] for m in sft_rows[0]["messages"]] == ["user", "assistant"]
    test_prompts = {r["prompt"][0]["content"] for r in recs}
    assert not test_prompts & {r["messages"][0]["content"] for r in sft_rows}


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    _, a, _ = build(tmp_path / "a", seed=5, politeness_rate=0.5)
    _, b, _ = build(tmp_path / "b", seed=5, politeness_rate=0.5)
    _, c, _ = build(tmp_path / "c", seed=6, politeness_rate=0.5)
    assert a[0].read_bytes() == b[0].read_bytes()
    assert a[1].read_bytes() == b[1].read_bytes()
    assert a[0].read_bytes() != c[0].read_bytes()


def test_spurious_features_on_chosen_side_at_rate(tmp_path):
    _, pairs, _ = build(
        tmp_path,
        sizes={"train": 400, "test": 1},
        politeness_rate=0.5,
        length_padding_rate=0.25,
    )
    recs = read_pairs(pairs[0])
    polite = [r["metadata"]["spurious"]["politeness"] for r in recs]
    padded = [r["metadata"]["spurious"]["length_padding"] for r in recs]
    assert 0.4 < sum(polite) / 400 < 0.6
    assert 0.17 < sum(padded) / 400 < 0.33
    for rec, pol, pad in zip(recs, polite, padded, strict=True):
        chosen = rec["chosen"][-1]["content"]
        rejected = rec["rejected"][-1]["content"]
        assert (chosen.split("\n\n")[0] in POLITE_OPENERS) == pol
        assert any(s in chosen for s in PADDING_SENTENCES) == pad
        assert not any(s in rejected for s in PADDING_SENTENCES)
        assert rejected.split("\n\n")[0] not in POLITE_OPENERS
        assert general.verify_many([(rec["metadata"]["task"], chosen)]) == [True]


def test_sample_reverified_from_scratch(tmp_path):
    _, pairs, _ = build(tmp_path, politeness_rate=0.5, length_padding_rate=0.5)
    recs = read_pairs(pairs[0])
    sample = random.Random(0).sample(recs, 10)
    items = [(r["metadata"]["task"], r["chosen"][-1]["content"]) for r in sample]
    assert all(general.verify_many(items))
    items = [(r["metadata"]["task"], r["rejected"][-1]["content"]) for r in sample]
    assert not any(general.verify_many(items))


def test_byo_source_and_bad_input_leaves_no_output(tmp_path):
    src = tmp_path / "mine.jsonl"
    rows = [
        {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(20)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, sft = outs(tmp_path, domain="chat")
    cfg = BuildPrefsConfig(source={"path": str(src), "test_fraction": 0.25})
    counts = build_prefs("chat", pairs, sft, cfg=cfg)
    assert counts["train"] == 15 and counts["test"] == 5 and counts["sft"] == 15
    rec = read_pairs(pairs[0])[0]
    assert rec["domain"] == "chat" and math.isnan(rec["attributes"]["chosen"]["format"])

    rows[7]["rejected"] = rows[7]["chosen"]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad_pairs, bad_sft = outs(tmp_path / "bad", domain="chat")
    with pytest.raises(RecordError, match=r"mine.jsonl: row 8: field 'rejected'"):
        build_prefs("chat", bad_pairs, bad_sft, cfg=cfg)
    assert not any(p.exists() for p in [*bad_pairs, bad_sft])
    assert not list((tmp_path / "bad").rglob("*"))  # no temp file either

    skip = BuildPrefsConfig(
        source={"path": str(src), "test_fraction": 0.25}, on_invalid="skip"
    )
    counts = build_prefs("chat", bad_pairs, bad_sft, cfg=skip)
    assert counts["train"] + counts["test"] == 19


def test_unknown_domain_without_source(tmp_path):
    pairs, sft = outs(tmp_path, domain="poetry")
    with pytest.raises(ValueError, match="has no generator"):
        build_prefs("poetry", pairs, sft, cfg=BuildPrefsConfig())


def test_cli(tmp_path, capsys):
    pairs, sft = outs(tmp_path)
    argv = ["--domain", "general", "--sizes", '{"train": 5, "test": 3}']
    argv += ["--sft-size", "2", "--pairs-out", *map(str, pairs), "--sft-out", str(sft)]
    assert main(argv) == 0
    assert len(pairs[1].read_text().splitlines()) == 3
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--length-padding-rate" in capsys.readouterr().out


@pytest.mark.parametrize("domain", ["general", "math", "code"])
def test_every_domain_byte_identical_per_seed(tmp_path, domain):
    def run(sub, seed):
        pairs = [tmp_path / sub / domain / f"{s}.jsonl" for s in ("train", "test")]
        sft = tmp_path / sub / "sft" / domain / "train.jsonl"
        cfg = BuildPrefsConfig(
            seed=seed,
            sizes={"train": 6, "test": 4},
            sft_size=3,
            politeness_rate=0.5,
            length_padding_rate=0.5,
            workers=2,
        )
        build_prefs(domain, pairs, sft, cfg=cfg)
        return b"".join(p.read_bytes() for p in [*pairs, sft])

    first = run("a", 11)
    assert first == run("b", 11)
    assert first != run("c", 12)


# ---- issue 10.5: bad input through the real CLI, named exactly, nothing lost


def cli(tmp_path, source, *extra, splits=("train", "test")):
    """Run ``python -m pipelines.build_prefs`` as a user does; stderr is a pipe."""
    out = tmp_path / "out"
    pairs = [out / "chat" / f"{s}.jsonl" for s in splits]
    sft = out / "sft" / "chat" / "train.jsonl"
    cmd = [sys.executable, "-m", "pipelines.build_prefs", "--domain", "chat"]
    cmd += ["--pairs-out", *map(str, pairs), "--sft-out", str(sft)]
    cmd += ["--source", json.dumps(source), "--sft-size", "50", *extra]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    written = sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []
    return res, pairs, sft, written


def assert_one_line_error(res, message):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines()[-1] == f"error: {message}"


def ids(*paths):
    return {r["id"] for p in paths for r in read_pairs(p)}


LATIN1_HINT = "(is the file in another encoding, e.g. Latin-1?)"


def utf8_problem(name, line):
    raw = (DATA / name).read_bytes().split(b"\n")[line - 1]
    col = next(i for i, b in enumerate(raw) if b >= 0x80)  # the first non-ASCII
    return f"invalid UTF-8: byte 0x{raw[col]:02x} at byte {col + 1} of the line"


@pytest.mark.parametrize(
    ("name", "row", "field", "problem"),
    [
        (
            "latin1.jsonl",
            3,
            "chosen[1].content",
            f"{utf8_problem('latin1.jsonl', 3)} {LATIN1_HINT}",
        ),
        (
            "bom_crlf_latin1.jsonl",
            3,
            "chosen",
            f"{utf8_problem('bom_crlf_latin1.jsonl', 3)} {LATIN1_HINT}",
        ),
        ("wrong_type.jsonl", 2, "rejected", "expected a string (flat format), got int"),
        ("empty_lists.jsonl", 1, "chosen", "empty message list"),
        (
            "last_turn_user.jsonl",
            2,
            "chosen[0].role",
            "last message must be the assistant reply",
        ),
        (
            "unterminated.jsonl",
            2,
            "<json>",
            "malformed JSON: Unterminated string starting at column 27",
        ),
        (
            "lone_surrogate.jsonl",
            1,
            "rejected",
            "not valid Unicode: lone surrogate '\\ud800'",
        ),
        (
            "infinity.jsonl",
            2,
            "attributes.chosen.correctness",
            "expected a finite number, got inf",
        ),
    ],
)
def test_bad_row_is_one_line_naming_file_row_field(tmp_path, name, row, field, problem):
    path = DATA / name
    res, _, _, written = cli(tmp_path, {"path": str(path)})
    assert_one_line_error(res, f"{path}: row {row}: field '{field}': {problem}")
    assert written == []


def test_invalid_utf8_skip_mode_skips_the_row_and_keeps_the_rest(tmp_path):
    path = DATA / "latin1.jsonl"
    res, pairs, sft, _ = cli(tmp_path, {"path": str(path)}, "--on-invalid", "skip")
    assert res.returncode == 0, res.stderr
    assert ids(*pairs) == {"row1", "row2", "row4"}
    assert f"skipped {path}: row 3: field 'chosen[1].content'" in res.stderr
    assert "read 4 rows, kept 3, skipped 1" in res.stderr


def test_bom_row_is_kept_and_crlf_blank_lines_keep_line_numbers(tmp_path):
    path = DATA / "bom_crlf_latin1.jsonl"
    res, pairs, sft, _ = cli(tmp_path, {"path": str(path)}, "--on-invalid", "skip")
    assert res.returncode == 0, res.stderr
    # line 1 starts with a BOM, line 3 is Latin-1, line 4 is blank
    assert ids(*pairs) == {"row1", "row2", "row5", "row6", "row7"}
    first = next(r for p in pairs for r in read_pairs(p) if r["id"] == "row1")
    assert first["prompt"][0]["content"] == "question 1"
    assert "read 6 rows, kept 5, skipped 1" in res.stderr


@pytest.mark.parametrize("name", ["pairs.jsonl", "plain"])
def test_a_folder_as_source(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    res, _, _, written = cli(tmp_path, {"path": str(folder)})
    assert_one_line_error(
        res,
        f"{folder}: a folder, not a data file; give a .jsonl, .json or .parquet"
        f" file, or load a `datasets` folder with 'hub': '{folder}'",
    )
    assert written == []


def test_missing_and_pretty_printed_sources(tmp_path):
    missing = tmp_path / "nope.jsonl"
    res, *_ = cli(tmp_path, {"path": str(missing)})
    assert_one_line_error(res, f"source file not found: {missing}")
    pretty = DATA / "pretty_array.json"
    res, *_ = cli(tmp_path, {"path": str(pretty)}, "--on-invalid", "skip")
    assert_one_line_error(
        res,
        f"{pretty}: line 1: a JSON array spread over lines, where JSON lines (one"
        f" object per line) are expected; convert it with: jq -c '.[]' {pretty}",
    )


def test_empty_train_split_is_refused_and_nothing_written(tmp_path):
    res, pairs, _, written = cli(tmp_path, {"path": str(DATA / "single_row.jsonl")})
    assert_one_line_error(
        res,
        f"{pairs[0]}: refusing to write an empty 'train' split for 'chat' (pairs"
        " per split: {'train': 0, 'test': 1}); a pooled source needs more valid"
        " rows or a smaller test_fraction",
    )
    assert written == []


def test_empty_sft_file_is_refused_and_nothing_written(tmp_path):
    src = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(4)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # every train prompt is also a test prompt, so no SFT example is left
    spec = {"splits": {"train": {"path": str(src)}, "test": {"path": str(src)}}}
    res, _, sft, written = cli(tmp_path, spec)
    assert_one_line_error(
        res,
        f"{sft}: refusing to write an empty SFT file for 'chat': SFT examples are"
        " the chosen replies of train prompts that are in no held-out split, and"
        " none is left (pairs per split: {'train': 4, 'test': 4})",
    )
    assert written == []
    res, _, sft, written = cli(tmp_path, spec, splits=("test",))  # no train split
    assert res.returncode == 2 and f"error: {sft}: refusing" in res.stderr
    assert written == []


def test_user_error_traceback_goes_to_the_log_file(tmp_path):
    log = tmp_path / "build.log"
    res, *_ = cli(
        tmp_path, {"path": str(DATA / "wrong_type.jsonl")}, "--log-file", str(log)
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "field 'rejected': expected a string (flat format), got int" in text


def test_a_bug_is_not_dressed_as_bad_input(tmp_path, monkeypatch):
    import pipelines.build_prefs as stage

    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(stage, "load_source", broken)
    pairs, sft = outs(tmp_path, domain="chat")
    argv = ["--domain", "chat", "--pairs-out", *map(str, pairs), "--sft-out", str(sft)]
    with pytest.raises(KeyError, match="internal"):
        main([*argv, "--source", '{"path": "x.jsonl"}'])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sft-size", "-1"], "--sft-size must be >= 0, got -1"),
        (
            ["--sft-size", "0", "--sft-out", "sft.jsonl"],
            "--sft-size must be at least 1 with --sft-out, got 0",
        ),
        (["--politeness-rate", "1.5"], "--politeness-rate must be in [0, 1], got 1.5"),
        (
            ["--sizes", '{"train": 0}'],
            "--sizes: split 'train' needs a whole number >= 1, got 0",
        ),
    ],
)
def test_out_of_range_flags(tmp_path, capsys, flags, message):
    pairs, sft = outs(tmp_path)
    flags = [str(tmp_path / f) if f.endswith(".jsonl") else f for f in flags]
    argv = ["--domain", "general", "--pairs-out", str(pairs[0]), *flags]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {message}"


def test_clashing_outputs(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    argv = ["--domain", "general", "--pairs-out", str(path), "--sft-out", str(path)]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {path}: given twice as an output"
    )


# ------------------------------------------------------- verifier settings


def gen_cli(tmp_path, domain, *extra, env=None):
    """``python -m pipelines.build_prefs`` on a generated domain, small sizes."""
    out = tmp_path / "gen"
    pairs = [out / domain / f"{s}.jsonl" for s in ("train", "test")]
    sft = out / "sft" / domain / "train.jsonl"
    cmd = [sys.executable, "-m", "pipelines.build_prefs", "--domain", domain]
    cmd += ["--pairs-out", *map(str, pairs), "--sft-out", str(sft)]
    cmd += ["--sizes", '{"train": 6, "test": 4}', "--sft-size", "3", *extra]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    return res, pairs, sft


@pytest.mark.parametrize("backend", ["bwrap", "rlimit"])
def test_code_records_name_the_sandbox_backend_that_ran(tmp_path, backend):
    res, pairs, sft = gen_cli(tmp_path, "code", "--sandbox-backend", backend)
    assert res.returncode == 0, res.stderr
    recs = [r for p in pairs for r in read_pairs(p)]
    recs += [json.loads(line) for line in sft.read_text().splitlines()]
    assert len(recs) == 6 + 4 + 3
    assert {json.dumps(r["metadata"]["verifier"]) for r in recs} == {
        json.dumps({"sandbox": backend})
    }


def test_a_sandbox_that_cannot_isolate_is_refused_in_one_line(tmp_path):
    # bubblewrap asked for by name but not on PATH: refused, nothing written
    res, pairs, sft = gen_cli(
        tmp_path, "code", "--sandbox-backend", "bwrap", env={"PATH": str(tmp_path)}
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bubblewrap" in last
    assert not any(p.exists() for p in [*pairs, sft])


def test_math_extraction_mode_is_used_and_recorded(tmp_path):
    res, pairs, _ = gen_cli(tmp_path / "r", "math", "--math-extraction", "regex")
    assert res.returncode == 0, res.stderr
    regex = [r for p in pairs for r in read_pairs(p)]
    assert {r["metadata"]["verifier"]["math_extraction"] for r in regex} == {"regex"}
    res, pairs, _ = gen_cli(tmp_path / "b", "math")
    assert res.returncode == 0, res.stderr
    balanced = [r for p in pairs for r in read_pairs(p)]
    assert {r["metadata"]["verifier"]["math_extraction"] for r in balanced} == {
        "balanced"
    }
    general, _, _ = gen_cli(tmp_path / "g", "general")
    assert general.returncode == 0, general.stderr
