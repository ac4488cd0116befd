import json
import math

import pytest

from pipelines.common.records import (
    RecordError,
    iter_rows,
    load_pairs,
    normalize_record,
    validate_pair,
)

P = [{"role": "user", "content": "What is 2+2?"}]


def good(**over):
    rec = {
        "id": "x1",
        "domain": "math",
        "subset": "arith",
        "prompt": P,
        "chosen": [*P, {"role": "assistant", "content": "4"}],
        "rejected": [*P, {"role": "assistant", "content": "5"}],
    }
    rec.update(over)
    return rec


def err_of(rec, fmt="standard"):
    with pytest.raises(RecordError) as info:
        normalize_record(rec, source="pairs.jsonl", row=7, fmt=fmt)
    return info.value


def test_valid_record_fills_nan_attributes():
    out = validate_pair(good(), source="f", row=1)
    assert out["chosen"][-1]["content"] == "4"
    assert set(out["attributes"]) == {"chosen", "rejected"}
    assert all(math.isnan(v) for v in out["attributes"]["chosen"].values())


@pytest.mark.parametrize(
    ("rec", "field", "words"),
    [
        ({k: v for k, v in good().items() if k != "chosen"}, "chosen", "missing"),
        (good(chosen="4"), "chosen", "expected a list"),
        (good(rejected=[]), "rejected", "empty message list"),
        (
            good(chosen=[*P, {"role": "assistant", "content": "   "}]),
            "chosen[1].content",
            "empty message",
        ),
        (
            good(chosen=[*P, {"role": "robot", "content": "4"}]),
            "chosen[1].role",
            "unknown role 'robot'",
        ),
        (
            good(chosen=[*P, {"role": "assistant", "content": 4}]),
            "chosen[1].content",
            "expected a string",
        ),
        (
            good(rejected=[*P, {"role": "assistant", "content": "4"}]),
            "rejected",
            "identical to chosen",
        ),
        (
            good(
                rejected=[
                    {"role": "user", "content": "What is 3+3?"},
                    {"role": "assistant", "content": "5"},
                ]
            ),
            "rejected",
            "prompt differs",
        ),
        (
            good(chosen=[*P, {"role": "assistant", "content": "4"}, *P]),
            "chosen[2].role",
            "last message must be the assistant",
        ),
        (good(id=""), "id", "non-empty"),
        (
            good(attributes={"chosen": {"correctness": "yes"}}),
            "attributes.chosen.correctness",
            "expected a finite number or null",
        ),
    ],
)
def test_bad_records_name_file_row_and_field(rec, field, words):
    err = err_of(rec)
    assert err.source == "pairs.jsonl" and err.row == 7 and err.field == field
    text = str(err)
    assert text.startswith(f"pairs.jsonl: row 7: field '{field}'")
    assert words in text


def test_flat_format_is_normalised():
    out = normalize_record(
        {"prompt": "hi", "chosen": "hello!", "rejected": "go away"},
        source="f",
        row=3,
    )
    assert out["prompt"] == [{"role": "user", "content": "hi"}]
    assert out["chosen"][-1] == {"role": "assistant", "content": "hello!"}
    assert out["rejected"][0] == out["chosen"][0]
    assert out["id"] == "row3"


def test_flat_format_bad_type_and_identical():
    assert err_of({"prompt": "hi", "chosen": "a", "rejected": 3}, "flat").field == (
        "rejected"
    )
    err = err_of({"prompt": "hi", "chosen": "a", "rejected": "a"}, "flat")
    assert "identical" in str(err)


def test_prompt_from_shared_prefix_when_missing():
    rec = good()
    del rec["prompt"]
    out = normalize_record(rec, source="f", row=1)
    assert out["prompt"] == P


def test_malformed_json_line_error_and_skip(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(good()), "{not json", json.dumps(good(id="x2"))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as info:
        load_pairs(iter_rows(path), source=str(path))
    assert info.value.row == 2 and info.value.field == "<json>"
    assert f"{path}: row 2" in str(info.value)
    recs, report = load_pairs(iter_rows(path), source=str(path), on_invalid="skip")
    assert [r["id"] for r in recs] == ["x1", "x2"]
    assert (report.read, report.kept, report.skipped) == (3, 2, 1)


def test_skip_counts_reasons(tmp_path):
    rows = [(1, good()), (2, good(id="b", rejected=good()["chosen"])), (3, 5)]
    recs, report = load_pairs(rows, source="mem", on_invalid="skip")
    assert len(recs) == 1 and report.skipped == 2
    assert sum(report.reasons.values()) == 2


# ---- issue 10.5: the right field, file-level problems, and nothing lost


U = {"role": "user", "content": "hi"}


def A(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize(
    ("rec", "field", "words"),
    [
        # a flat row with no prompt and a non-string side: the fault is 'rejected'
        ({"chosen": "text", "rejected": 5}, "rejected", "expected a string"),
        ({"chosen": 5, "rejected": "text", "prompt": "q"}, "chosen", "got int"),
        ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
        # no prompt: the prompt comes from 'chosen', so problems are named there
        ({"chosen": [], "rejected": []}, "chosen", "empty message list"),
        (
            {"chosen": [U], "rejected": [U, A("x")]},
            "chosen[0].role",
            "last message must be the assistant reply",
        ),
        ({"chosen": [A("x")], "rejected": [A("y")]}, "chosen", "no prompt"),
        ({"rejected": [U, A("x")]}, "chosen", "missing"),
        # values that could not be written back as UTF-8 JSON
        (
            {"prompt": "q", "chosen": "ok", "rejected": "bad \ud800"},
            "rejected",
            "lone surrogate",
        ),
        (
            good(attributes={"chosen": {"correctness": float("inf")}}),
            "attributes.chosen.correctness",
            "finite",
        ),
        (
            good(metadata={"when": {"at": [1, float("-inf")]}}),
            "metadata.when.at[1]",
            "finite number, got -inf",
        ),
        (good(metadata={"d": {1, 2}}), "metadata.d", "expected JSON data, got set"),
    ],
)
def test_the_field_named_is_the_one_at_fault(rec, field, words):
    with pytest.raises(RecordError) as info:
        normalize_record(rec, source="pairs.jsonl", row=7)
    assert info.value.field == field
    assert words in str(info.value)


def test_nan_attributes_and_metadata_are_kept_as_unknown():
    rec = good(
        attributes={"chosen": {"correctness": float("nan")}},
        metadata={"score": float("nan")},
    )
    out = normalize_record(rec, source="f", row=1)
    assert math.isnan(out["attributes"]["chosen"]["correctness"])


def write_bytes(path, *lines, end=b"\n"):
    path.write_bytes(b"".join(line + end for line in lines))
    return path


def flat(i):
    return json.dumps(
        {"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}"}
    ).encode()


def test_invalid_utf8_names_line_field_and_byte_and_skip_keeps_the_rest(tmp_path):
    bad = b'{"prompt": "q", "chosen": [1], "rejected": "caf\xe9"}'
    path = write_bytes(tmp_path / "p.jsonl", flat(1), bad, flat(3))
    with pytest.raises(RecordError) as info:
        load_pairs(iter_rows(path), source=str(path))
    err = info.value
    assert (err.source, err.row, err.field) == (str(path), 2, "rejected")
    column = bad.index(b"\xe9") + 1
    assert f"invalid UTF-8: byte 0xe9 at byte {column} of the line" in str(err)
    recs, report = load_pairs(iter_rows(path), source=str(path), on_invalid="skip")
    assert [r["id"] for r in recs] == ["row1", "row3"]
    assert (report.read, report.kept, report.skipped) == (3, 2, 1)


def test_invalid_utf8_outside_any_string_names_the_line(tmp_path):
    path = write_bytes(tmp_path / "p.jsonl", b'{"a": 1\xff}')
    rows = list(iter_rows(path))
    assert rows[0][1].field == "<line>"
    assert "0xff at byte 8" in rows[0][1].problem


def test_bom_crlf_and_blank_lines_keep_editor_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + flat(1) + b"\r\n\r\n" + flat(3) + b"\r\n" + b"{oops\r\n"
    )
    rows = list(iter_rows(path))
    assert [r for r, _ in rows] == [1, 3, 4]
    assert rows[0][1] == json.loads(flat(1)) and rows[1][1] == json.loads(flat(3))
    assert isinstance(rows[2][1], RecordError) and rows[2][1].row == 4


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # hand-derived: the opening quote of "a is the 27th character
        (b'{"prompt": "q", "chosen": "a', "Unterminated string starting at column 27"),
        (b'{"prompt": "q" "chosen": 1}', "Expecting ',' delimiter at column 16"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_json_message(tmp_path, line, expected):
    path = write_bytes(tmp_path / "p.jsonl", flat(0), line)
    ((row, err),) = [r for r in iter_rows(path) if isinstance(r[1], RecordError)]
    assert row == 2 and err.field == "<json>"
    assert err.problem == f"malformed JSON: {expected}"
    assert "at at" not in str(err)
