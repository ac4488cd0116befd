import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from pipelines.common.armo.backbone import (
    PatternError,
    assistant_pattern,
    last_occurrence,
    prompt_positions,
)
from pipelines.common.armo.embeddings import EmbeddingFileError, read_shards
from pipelines.common.chat_format import setup_chat_format
from pipelines.common.modeling import chat_text, load_tokenizer
from pipelines.common.records import RecordError
from pipelines.extract_embeddings import ExtractConfig, extract_embeddings
from tests.unit.armo_fixtures import make_backbone, pair_records, write_pairs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return str(make_backbone(tmp_path_factory.mktemp("armo_backbone")))


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("armo_pairs") / "pairs.jsonl"
    return write_pairs(path, pair_records(13, long_every=5))


def by_hand(backbone, messages):
    """Final-norm hidden states of one unpadded conversation (no batching)."""
    tok = load_tokenizer(backbone)
    ids = tok(chat_text(tok, messages), add_special_tokens=True)["input_ids"]
    model = AutoModel.from_pretrained(backbone).eval()
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return ids, states.numpy()


def test_pattern_of_the_tiny_template_is_eos_then_assistant(backbone):
    tok = load_tokenizer(backbone)
    setup_chat_format(tok, backbone, chat_template=None, system_prompt=None)
    # rmflow's template: <|user|>U<|endoftext|><|assistant|>R<|endoftext|>
    expected = tok.convert_tokens_to_ids(["<|endoftext|>", "<|assistant|>"])
    assert assistant_pattern(tok) == expected


def test_pattern_of_a_header_template_includes_the_newlines(backbone):
    tok = load_tokenizer(backbone)
    # Llama-3's shape: end of turn, assistant header, blank line
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n\n{{ m['content'] }}"
        "<|endoftext|>{% endfor %}"
    )
    setup_chat_format(tok, backbone, chat_template=template, system_prompt=None)
    newline = tok.convert_tokens_to_ids("\u010a\u010a")  # byte-level "\n\n"
    if newline == tok.unk_token_id or newline is None:
        newline_ids = [tok.convert_tokens_to_ids("\u010a")] * 2
    else:
        newline_ids = [newline]
    expected = tok.convert_tokens_to_ids(["<|endoftext|>", "<|assistant|>"])
    assert assistant_pattern(tok) == expected + newline_ids


def test_a_template_without_turn_boundaries_is_refused(backbone):
    tok = load_tokenizer(backbone)
    only_last = "{{ messages[-1]['content'] }}"
    setup_chat_format(tok, backbone, chat_template=only_last, system_prompt=None)
    with pytest.raises(PatternError, match="does not render the turns"):
        assistant_pattern(tok)


def test_last_occurrence_and_missing_pattern():
    assert last_occurrence([1, 2, 3, 1, 2, 9, 1, 2], [1, 2]) == 6
    assert last_occurrence([1, 2, 3, 1, 2, 9], [1, 2]) == 3
    assert last_occurrence([1, 2], [1, 2, 3]) == -1
    assert last_occurrence([3, 3, 3], [1]) == -1
    with pytest.raises(PatternError, match="row 7 of x"):
        prompt_positions([[5, 1, 2], [5, 5]], [1, 2], ["a", "row 7 of x"])


def test_pairs_match_a_by_hand_forward_pass(backbone, pairs_file, tmp_path):
    out = tmp_path / "e.safetensors"
    cfg = ExtractConfig(batch_size=4, max_length=1024)
    extract_embeddings(pairs_file, backbone, out, kind="pairs", cfg=cfg)
    got = read_shards([out])
    rec = pair_records(13, long_every=5)[4]
    idx = got.ids.index(rec["id"])
    tok = load_tokenizer(backbone)
    for side_i, side in enumerate(("chosen", "rejected")):
        ids, states = by_hand(backbone, rec[side])
        np.testing.assert_allclose(got.embeddings[idx, side_i], states[-1], atol=1e-5)
        # the prompt position, found by hand: the <|endoftext|> before <|assistant|>
        eos, asst = tok.convert_tokens_to_ids(["<|endoftext|>", "<|assistant|>"])
        at = max(i for i in range(len(ids) - 1) if ids[i : i + 2] == [eos, asst])
        np.testing.assert_allclose(
            got.prompt_embeddings[idx, side_i], states[at], atol=1e-5
        )
    # the prompt is shared: both sides' prompt embeddings agree
    np.testing.assert_allclose(
        got.prompt_embeddings[:, 0], got.prompt_embeddings[:, 1], atol=1e-5
    )


def test_batched_equals_batch_one_and_shards_equal_the_whole(
    backbone, pairs_file, tmp_path
):
    whole = tmp_path / "whole.safetensors"
    extract_embeddings(
        pairs_file, backbone, whole, kind="pairs", cfg=ExtractConfig(batch_size=1)
    )
    shards = [tmp_path / f"s{i}.safetensors" for i in range(3)]
    for i, path in enumerate(shards):
        extract_embeddings(
            pairs_file,
            backbone,
            path,
            kind="pairs",
            shard=i,
            n_shards=3,
            cfg=ExtractConfig(batch_size=5),
        )
    a, b = read_shards([whole]), read_shards(shards)
    assert a.ids == b.ids and a.domains == b.domains and len(a) == 13
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    np.testing.assert_allclose(a.prompt_embeddings, b.prompt_embeddings, atol=1e-5)
    with pytest.raises(EmbeddingFileError, match="expected shards"):
        read_shards([shards[1], shards[0], shards[2]])
    with pytest.raises(EmbeddingFileError, match="expected shards"):
        read_shards(shards[:2])


def test_over_length_rows_are_dropped_and_ids_stay_aligned(
    backbone, pairs_file, tmp_path
):
    out = tmp_path / "short.safetensors"
    tok = load_tokenizer(backbone)
    records = pair_records(13, long_every=5)
    lengths = [
        max(
            len(tok(chat_text(tok, r[s]), add_special_tokens=True)["input_ids"])
            for s in ("chosen", "rejected")
        )
        for r in records
    ]
    limit = 40
    expected_kept = [
        r["id"] for r, n in zip(records, lengths, strict=True) if n <= limit
    ]
    assert 0 < len(expected_kept) < len(records)  # the fixture has long rows
    extract_embeddings(
        pairs_file, backbone, out, kind="pairs", cfg=ExtractConfig(max_length=limit)
    )
    got = read_shards([out])
    assert got.ids == expected_kept
    assert sorted(got.dropped) == sorted(set(r["id"] for r in records) - set(got.ids))
    assert got.n_rows == 13 and got.embeddings.shape[0] == len(expected_kept)


def test_responses_keep_labels_in_order_with_nan(backbone, tmp_path):
    data = tmp_path / "resp.jsonl"
    rows = [
        {
            "id": f"r{i}",
            "domain": "math",
            "messages": [
                {"role": "user", "content": "what is two"},
                {"role": "assistant", "content": "seven " * (i + 1)},
            ],
            "labels": {"b": float(i), "a": None if i == 1 else 2.0 * i},
        }
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "r.safetensors"
    extract_embeddings(data, backbone, out, kind="responses")
    got = read_shards([out])
    assert got.attributes == ["b", "a"]
    expected = np.array([[0, 0], [1, np.nan], [2, 4], [3, 6]], dtype=np.float32)
    np.testing.assert_array_equal(got.labels, expected)
    _, states = by_hand(backbone, rows[2]["messages"])
    np.testing.assert_allclose(got.embeddings[2], states[-1], atol=1e-5)
    rows[3]["labels"] = {"a": 1.0, "b": 2.0}  # other names, other order
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(RecordError, match="row 4: field 'labels'"):
        extract_embeddings(data, backbone, out, kind="responses")


def test_cli_help_loads_no_torch():
    code = (
        "import sys; from pipelines.extract_embeddings import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--n-shards" in proc.stdout
