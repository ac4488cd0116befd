import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.common.cli import UserError
from pipelines.common.io import InputFileError, MissingInputError
from pipelines.common.records import RecordError
from pipelines.common.sources import SourceSpecError, load_entry, load_source


def flat_rows(n):
    return [
        {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(n)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_flat_pool_split_is_seeded_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", flat_rows(50))
    spec = {"path": str(path), "test_fraction": 0.2}
    a = load_source(spec, splits=["train", "test"], seed=1)
    b = load_source(spec, splits=["train", "test"], seed=1)
    c = load_source(spec, splits=["train", "test"], seed=2)
    assert len(a["test"]) == 10 and len(a["train"]) == 40
    assert a == b
    assert [r["id"] for r in a["test"]] != [r["id"] for r in c["test"]]
    test_ids = {r["id"] for r in a["test"]}
    assert not test_ids & {r["id"] for r in a["train"]}


def test_parquet_standard_format(tmp_path):
    rows = []
    for i in range(6):
        p = [{"role": "user", "content": f"q{i}"}]
        rows.append(
            {
                "id": f"r{i}",
                "chosen": [*p, {"role": "assistant", "content": "yes"}],
                "rejected": [*p, {"role": "assistant", "content": "no"}],
            }
        )
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    recs, report = load_entry({"path": str(path)})
    assert report.kept == 6
    assert recs[0]["prompt"] == [{"role": "user", "content": "q0"}]


def test_parquet_bad_row_names_file_row_field(tmp_path):
    rows = flat_rows(3)
    rows[1]["chosen"] = rows[1]["rejected"]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(RecordError, match=r"p.parquet: row 2: field 'rejected'"):
        load_entry({"path": str(path)})


def test_hub_path_loads_a_local_datasets_folder(tmp_path):
    # The hub branch calls datasets.load_dataset; a local folder goes through
    # the same call, so the hub code path is exercised offline.
    folder = tmp_path / "my-dataset"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "train.jsonl", flat_rows(5))
    write_jsonl(folder / "data" / "test.jsonl", flat_rows(3))
    spec = {
        "splits": {
            "train": {"hub": str(folder), "hub_split": "train", "format": "flat"},
            "test": {"hub": str(folder), "hub_split": "test", "format": "flat"},
        }
    }
    out = load_source(spec, splits=["train", "test"], seed=0)
    assert len(out["train"]) == 5 and len(out["test"]) == 3


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        load_entry({})
    with pytest.raises(ValueError, match="unknown source key"):
        load_entry({"path": "x", "colour": 1})
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_entry({"path": str(tmp_path / "nope.jsonl")})
    csv = tmp_path / "a.csv"
    csv.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_entry({"path": str(csv)})
    path = write_jsonl(tmp_path / "p.jsonl", flat_rows(4))
    with pytest.raises(ValueError, match="no entry for split"):
        load_source(
            {"splits": {"train": {"path": str(path)}}}, splits=["train", "test"], seed=0
        )
    with pytest.raises(ValueError, match="single-pool"):
        load_source({"path": str(path)}, splits=["train", "dev"], seed=0)


# ---- issue 10.5: every problem is a UserError naming the file or key


@pytest.mark.parametrize("name", ["pairs.jsonl", "plain"])
def test_a_folder_is_named_as_a_folder(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    with pytest.raises(InputFileError) as info:
        load_entry({"path": str(folder)})
    assert str(info.value).startswith(f"{folder}: a folder, not a data file")
    assert "'hub'" in str(info.value)  # how to load a datasets folder instead


def test_missing_file_is_a_user_error_and_file_not_found(tmp_path):
    with pytest.raises(MissingInputError) as info:
        load_entry({"path": str(tmp_path / "nope.jsonl")})
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, UserError)
    assert str(tmp_path / "nope.jsonl") in str(info.value)


def test_corrupt_parquet_names_the_file(tmp_path):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputFileError, match=r"p.parquet: not a readable Parquet"):
        load_entry({"path": str(path)})


def test_pretty_printed_json_array_is_named(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(flat_rows(2), indent=2))
    with pytest.raises(InputFileError) as info:
        load_entry({"path": str(path)}, on_invalid="skip")
    assert str(info.value).startswith(f"{path}: line 1: a JSON array spread")
    assert f"jq -c '.[]' {path}" in str(info.value)


def test_empty_file_and_all_rows_skipped(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputFileError, match=r"e.jsonl: no rows"):
        load_entry({"path": str(empty)})
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"prompt": "q"}\n[1]\n')
    with pytest.raises(InputFileError) as info:
        load_entry({"path": str(bad)}, on_invalid="skip")
    assert "b.jsonl: no valid rows: all 2 were skipped" in str(info.value)


def test_hub_dataset_that_cannot_load_is_named(tmp_path):
    spec = {"hub": str(tmp_path / "no-such-dataset"), "hub_split": "train"}
    with pytest.raises(InputFileError) as info:
        load_entry(spec)
    assert str(info.value).startswith(
        f"{tmp_path / 'no-such-dataset'}[train]: cannot load the dataset"
    )


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("p.jsonl", "a source must be an object"),
        ({"splits": {"train": "p.jsonl"}}, "a source entry must be an object"),
        ({"path": "p.jsonl", "format": "csv"}, "'format' must be one of"),
        ({"path": "p.jsonl", "test_fraction": "a"}, "test_fraction must be a number"),
        ({"path": "p.jsonl", "test_fraction": 1.0}, "must be in (0, 1)"),
    ],
)
def test_bad_specs_are_spec_errors(spec, words):
    with pytest.raises(SourceSpecError) as info:
        load_source(spec, splits=["train"], seed=0)
    assert words in str(info.value)
