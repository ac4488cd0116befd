import json
import math

import pytest

from pipelines.build_armo_data import RECORD_ATTRIBUTES, build_armo_data, main
from pipelines.common.io import read_jsonl
from pipelines.common.records import RecordError
from tests.unit.armo_fixtures import pair_records, write_pairs


def test_records_give_two_labelled_responses_each(tmp_path):
    records = write_pairs(tmp_path / "p.jsonl", pair_records(6))
    out = tmp_path / "mo.jsonl"
    summary = build_armo_data(out, kind="responses", records=[records], seed=3)
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert len(rows) == 12 and summary["attributes"] == list(RECORD_ATTRIBUTES)
    # pair 2: politeness was added to its chosen reply (i % 2 == 0), nothing else
    # verbosity (words: 3 + i % 3 chosen, 1 rejected) scaled by [1, 5] to [0, 1]
    chosen, rejected = rows["math-002:chosen"], rows["math-002:rejected"]
    assert rows["math-001:chosen"]["labels"]["verbosity"] == 0.75
    assert rejected["labels"]["verbosity"] == 0.0
    assert chosen["labels"] == {
        "correctness": 1.0,
        "verbosity": 1.0,
        "format": 1.0,
        "politeness": 1.0,
        "length_padding": None,  # the record does not say
    }
    assert rejected["labels"]["politeness"] == 0.0
    assert rejected["labels"]["format"] is None  # unknown stays unknown
    assert rows["math-001:chosen"]["labels"]["politeness"] == 0.0
    assert chosen["messages"][-1]["role"] == "assistant"
    # shuffled, seeded: another seed, another order; same seed, same order
    order = [r["id"] for r in read_jsonl(out)]
    build_armo_data(tmp_path / "b.jsonl", kind="responses", records=[records], seed=3)
    assert [r["id"] for r in read_jsonl(tmp_path / "b.jsonl")] == order
    build_armo_data(tmp_path / "c.jsonl", kind="responses", records=[records], seed=4)
    assert [r["id"] for r in read_jsonl(tmp_path / "c.jsonl")] != order


def hub_like_rows():
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    return [
        {"messages": msgs, "helpfulness": 3, "verbosity": None, "is_safe": True},
        {"messages": msgs, "helpfulness": 2.5, "verbosity": 4, "is_safe": False},
    ]


def test_source_rows_take_columns_in_the_given_order(tmp_path):
    src = tmp_path / "mo.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in hub_like_rows()))
    out = tmp_path / "out.jsonl"
    names = ["verbosity", "helpfulness", "is_safe"]
    build_armo_data(out, kind="responses", source={"path": str(src)}, attributes=names)
    rows = sorted(read_jsonl(out), key=lambda r: r["id"])
    assert [list(r["labels"]) for r in rows] == [names, names]
    assert rows[0]["labels"] == {"verbosity": None, "helpfulness": 3.0, "is_safe": 1.0}
    assert rows[1]["labels"] == {"verbosity": 4.0, "helpfulness": 2.5, "is_safe": 0.0}
    assert rows[0]["id"].endswith("#1")


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"verbosity": "long"}, "row 2: field 'verbosity'"),
        ({"verbosity": math.inf}, "row 2: field 'verbosity'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "row 2: field 'messages'"),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            r"row 2: field 'messages\[0\]\.role'",
        ),
    ],
)
def test_bad_source_rows_are_named(tmp_path, change, where):
    rows = hub_like_rows()
    rows[1].update(change)
    src = tmp_path / "mo.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RecordError, match=where):
        build_armo_data(
            tmp_path / "o.jsonl",
            kind="responses",
            source={"path": str(src)},
            attributes=["verbosity", "helpfulness"],
        )
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_missing_attribute_column_is_named(tmp_path):
    src = tmp_path / "mo.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in hub_like_rows()))
    with pytest.raises(RecordError, match="row 1: field 'honesty'"):
        build_armo_data(
            tmp_path / "o.jsonl",
            kind="responses",
            source={"path": str(src)},
            attributes=["helpfulness", "honesty"],
        )


def test_pairs_pass_through_in_order_and_cli(tmp_path):
    a = write_pairs(tmp_path / "a.jsonl", pair_records(3, "math"))
    b = write_pairs(tmp_path / "b.jsonl", pair_records(2, "code"))
    out = tmp_path / "pref.jsonl"
    rc = main(["--kind", "pairs", "--records", str(a), str(b), "--out", str(out)])
    assert rc == 0
    ids = [r["id"] for r in read_jsonl(out)]
    assert ids == [f"math-{i:03d}" for i in range(3)] + ["code-000", "code-001"]
    assert main(["--kind", "pairs", "--out", str(out)]) == 2  # neither input
