"""The tokenisation contract of pipelines/common/modeling.py (DESIGN.md principle 4)."""

import logging

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.modeling import (
    CHAT_TEMPLATE,
    EOS,
    PAD,
    ROLE_TOKENS,
    SpecialFrame,
    TinyArch,
    encode_conversations,
    ensure_pad_embeddings,
    init_tiny_causal_lm,
    load_reward_model,
    load_tokenizer,
    pad_batch,
    score_ids,
    special_frame,
    train_tokenizer,
    truncate_ids,
)
from pipelines.common.progress import Progress
from pipelines.common.records import read_pairs

from .bos_tokenizers import KINDS, save_bos_tokenizer

ARCH = TinyArch(num_hidden_layers=2)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    recs = []
    for domain in ("general", "math"):
        out = root / domain / "test.jsonl"
        cfg = BuildPrefsConfig(sizes={"test": 12}, sft_size=1, workers=1)
        build_prefs(domain, [out], None, cfg=cfg)
        recs += read_pairs(out)
    return recs


@pytest.fixture(scope="module")
def convs(pairs):
    return [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs]


def corpus(pairs):
    return [m["content"] for r in pairs for m in r["chosen"] + r["rejected"]]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, pairs):
    tok = train_tokenizer(corpus(pairs), vocab_size=400)
    lm = init_tiny_causal_lm(tok, seed=0, arch=ARCH)
    path = tmp_path_factory.mktemp("rm")
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok(rm_dir):
    return load_tokenizer(rm_dir)


@pytest.fixture(scope="module")
def rm(rm_dir, tok):
    torch.manual_seed(3)
    model = load_reward_model(rm_dir)
    ensure_pad_embeddings(model, tok)
    return model.eval()


@pytest.fixture(scope="module")
def ids(tok, convs):
    return encode_conversations(tok, convs, max_length=1024).ids


@torch.no_grad()
def manual_score(model, seq):
    """Forward one unpadded sequence and read the last position's logit."""
    ids = torch.tensor([list(seq)])
    hidden = model.base_model(input_ids=ids).last_hidden_state
    return float(model.score(hidden)[0, -1, 0])


def test_trained_tokenizer_has_distinct_pad(tok, rm):
    assert tok.pad_token == PAD
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    assert rm.config.pad_token_id == tok.pad_token_id


def test_pad_equal_to_eos_gets_a_distinct_pad(tmp_path, pairs):
    tok = train_tokenizer(corpus(pairs), vocab_size=400)
    tok.pad_token = EOS  # as many hub tokenizers ship
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == PAD
    assert loaded.pad_token_id != loaded.eos_token_id


@pytest.fixture(scope="module")
def no_pad_dir(tmp_path_factory, pairs):
    """A tokenizer whose vocabulary has no pad at all, saved with pad == EOS."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus(pairs), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    tok.chat_template = CHAT_TEMPLATE
    lm = init_tiny_causal_lm(tok, seed=0, arch=ARCH)
    path = tmp_path_factory.mktemp("nopad")
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path, len(tok)


def test_new_pad_token_resizes_and_pools_last_real_token(no_pad_dir, convs):
    path, vocab = no_pad_dir
    tok = load_tokenizer(path)
    assert tok.pad_token == PAD
    assert tok.pad_token_id == vocab  # a new id, after the trained vocabulary
    assert tok.pad_token_id != tok.eos_token_id
    torch.manual_seed(0)
    model = load_reward_model(path)
    assert model.get_input_embeddings().weight.shape[0] == vocab
    ensure_pad_embeddings(model, tok)
    assert model.get_input_embeddings().weight.shape[0] == vocab + 1
    assert model.config.pad_token_id == tok.pad_token_id
    seqs = encode_conversations(tok, convs[:6], max_length=1024).ids
    # every sequence ends with EOS (the template closes each turn with it): the
    # pooled token must be that EOS, not the token before the first EOS
    assert all(s[-1] == tok.eos_token_id for s in seqs)
    got = score_ids(model, seqs, pad_id=tok.pad_token_id, batch_size=6)
    want = [manual_score(model, s) for s in seqs]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_scores_do_not_depend_on_batch_size(rm, tok, ids):
    one = score_ids(rm, ids, pad_id=tok.pad_token_id, batch_size=1)
    many = score_ids(rm, ids, pad_id=tok.pad_token_id, batch_size=16)
    np.testing.assert_allclose(one, many, atol=1e-5, rtol=0)
    assert np.ptp(one) > 1e-3  # the scores are not all alike


def test_score_does_not_depend_on_batch_neighbours(rm, tok, ids):
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    short, mid, long = (ids[order[0]], ids[order[len(ids) // 2]], ids[order[-1]])
    assert len(short) < len(mid) < len(long)
    pad = tok.pad_token_id
    alone = score_ids(rm, [short], pad_id=pad, batch_size=1)[0]
    for batch, pos in (
        ([short, long], 0),  # longer sequence after it
        ([long, short], 1),  # before it
        ([long, short, mid], 1),  # both sides
        ([mid, long, short], 2),
    ):
        got = score_ids(
            rm, batch, pad_id=pad, batch_size=len(batch), sort_by_length=False
        )
        assert got[pos] == pytest.approx(alone, abs=1e-5)


def test_pooled_token_is_last_non_pad_token(rm, tok, ids):
    pad = tok.pad_token_id
    batch = [ids[i] for i in range(8)]
    got = score_ids(rm, batch, pad_id=pad, batch_size=8, sort_by_length=False)
    want = [manual_score(rm, s) for s in batch]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the padded batch really pads: the shorter rows carry pad ids at the end
    tensor, mask = pad_batch(batch, pad)
    assert (tensor[mask == 0] == pad).all() and (mask == 0).any()


def test_sequence_filling_max_length_exactly(rm, tok, convs):
    full = encode_conversations(tok, convs, max_length=1024).ids
    longest = max(range(len(full)), key=lambda i: len(full[i]))
    limit = len(full[longest]) - 7
    enc = encode_conversations(tok, convs, max_length=limit)
    seq = enc.ids[longest]
    assert len(seq) == limit
    assert seq == full[longest][-limit:]
    shorter = [s for s in enc.ids if len(s) < limit][:3]
    got = score_ids(rm, [seq, *shorter], pad_id=tok.pad_token_id, batch_size=4)
    assert got[0] == pytest.approx(manual_score(rm, seq), abs=1e-5)


def test_truncation_sides_and_counts(tok, convs, ids):
    lengths = sorted(len(s) for s in ids)
    limit = lengths[len(lengths) // 2]
    over = sum(n > limit for n in lengths)
    exact = sum(n == limit for n in lengths)
    assert over > 0 and exact > 0
    left = encode_conversations(tok, convs, max_length=limit, truncation_side="left")
    right = encode_conversations(tok, convs, max_length=limit, truncation_side="right")
    assert left.truncated == right.truncated == over  # == max_length is not cut
    for full, lcut, rcut in zip(ids, left.ids, right.ids, strict=True):
        if len(full) > limit:
            assert lcut == full[-limit:]  # left keeps the end (the reply, EOS)
            assert rcut == full[:limit]  # right keeps the start
            assert lcut[-1] == tok.eos_token_id
        else:
            assert lcut == rcut == full
    with pytest.raises(ValueError, match="truncation_side"):
        encode_conversations(tok, convs, max_length=limit, truncation_side="middle")


def test_tiny_tokenizer_ids_are_unchanged_by_special_token_truncation(tok, convs):
    """The tiny tokenizer adds no special token, so keeping the special prefix
    and suffix must leave its ids exactly as plain slicing gave them (the tiny
    study's numbers do not move)."""
    assert special_frame(tok) == SpecialFrame()
    assert (
        tok("a b c")["input_ids"] == tok("a b c", add_special_tokens=False)["input_ids"]
    )
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    plain = tok(texts)["input_ids"]
    for limit in (5, 17, 40, max(len(p) for p in plain)):
        for side in ("left", "right"):
            got = encode_conversations(
                tok, convs, max_length=limit, truncation_side=side
            ).ids
            # what main did before: ids[-n:] / ids[:n] of the tokenizer's output
            want = [p[-limit:] if side == "left" else p[:limit] for p in plain]
            assert got == want


# ------------------------------------------------ a BOS-adding tokenizer (Llama)
@pytest.fixture(scope="module", params=KINDS)
def bos_tok(request, pairs, tmp_path_factory):
    """A BPE that adds BOS (bos_eos: and EOS), reloaded as a hub model would be."""
    path = tmp_path_factory.mktemp(f"bos_{request.param}")
    save_bos_tokenizer(corpus(pairs), path, kind=request.param)
    loaded = load_tokenizer(path)  # adds <|pad|>, keeps the post-processor
    assert loaded("hello")["input_ids"][0] == loaded.bos_token_id
    return request.param, loaded


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_keeps_bos_like_the_hf_tokenizer(bos_tok, convs, side):
    kind, tok = bos_tok
    bos, eos = tok.bos_token_id, tok.eos_token_id
    # the text as the template renders it, its BOS string removed (the
    # tokenizer adds BOS itself)
    texts = [tok.apply_chat_template(c, tokenize=False)[len("<s>") :] for c in convs]
    full = tok(texts)["input_ids"]
    assert all(ids[0] == bos and ids[1] != bos for ids in full)  # one BOS
    limit = sorted(len(ids) for ids in full)[len(full) // 3]
    n_over = sum(len(ids) > limit for ids in full)
    assert n_over > len(full) // 2
    enc = encode_conversations(tok, convs, max_length=limit, truncation_side=side)
    tok.truncation_side = side
    try:  # the independent computation: the HF tokenizer's own truncation
        want = tok(texts, truncation=True, max_length=limit)["input_ids"]
    finally:
        tok.truncation_side = "left"
    assert enc.ids == want
    assert enc.truncated == n_over == sum(enc.cut)
    for got, ids in zip(enc.ids, full, strict=True):
        assert got[0] == bos and got.count(bos) == 1
        if kind == "bos_eos":
            assert got[-1] == eos  # the appended EOS survives too
        if len(ids) > limit and side == "left":
            assert got[-2:] == ids[-2:]  # the end of the reply is kept
    # what main did (ids[-n:]) would have lost BOS on every cut sequence
    assert sum(ids[-limit:][0] != bos for ids in full if len(ids) > limit) == n_over


def test_special_frame_of_bos_tokenizers(bos_tok):
    kind, tok = bos_tok
    frame = special_frame(tok)
    assert frame.prefix == (tok.bos_token_id,)
    assert frame.suffix == ((tok.eos_token_id,) if kind == "bos_eos" else ())
    assert frame.size == tok.num_special_tokens_to_add()


def test_truncate_ids_by_hand():
    frame = SpecialFrame(prefix=(1,), suffix=(2,))
    seq = [1, 10, 11, 12, 13, 14, 2]
    assert truncate_ids(seq, max_length=4, side="left", frame=frame) == [1, 13, 14, 2]
    assert truncate_ids(seq, max_length=4, side="right", frame=frame) == [1, 10, 11, 2]
    assert truncate_ids(seq, max_length=7, side="left", frame=frame) == seq
    # aligned per-token lists (SFT labels) are cut at the same positions
    labels = [-100, -100, 11, 12, 13, 14, 2]
    assert truncate_ids(labels, max_length=5, side="left", frame=frame) == [
        -100,
        12,
        13,
        14,
        2,
    ]
    assert truncate_ids(seq, max_length=3, side="left") == [13, 14, 2]  # no frame
    with pytest.raises(ValueError, match="no room for content"):
        truncate_ids(seq, max_length=2, side="left", frame=frame)
    with pytest.raises(ValueError, match="truncation_side"):
        truncate_ids(seq, max_length=4, side="up", frame=frame)


def test_system_prompt_becomes_the_first_turn(tok, convs):
    conv = [m for m in convs[0] if m["role"] != "system"]
    with_sp = encode_conversations(
        tok, [conv], max_length=1024, system_prompt="Be brief."
    ).ids[0]
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *conv], tokenize=False
    )
    assert with_sp == tok(text)["input_ids"]
    own = [{"role": "system", "content": "Own."}, *conv]
    kept = encode_conversations(tok, [own], max_length=1024, system_prompt="X").ids[0]
    assert kept == tok(tok.apply_chat_template(own, tokenize=False))["input_ids"]
    none = encode_conversations(tok, [conv], max_length=1024, system_prompt="").ids
    assert none == encode_conversations(tok, [conv], max_length=1024).ids


def test_length_sorted_and_input_order_agree(rm, tok, ids):
    pad = tok.pad_token_id
    srt = score_ids(rm, ids, pad_id=pad, batch_size=5, sort_by_length=True)
    raw = score_ids(rm, ids, pad_id=pad, batch_size=5, sort_by_length=False)
    np.testing.assert_allclose(srt, raw, atol=1e-5, rtol=0)
    # scores come back in input order: compare with one-by-one scoring
    ref = [manual_score(rm, ids[i]) for i in (0, len(ids) // 2, len(ids) - 1)]
    np.testing.assert_allclose(srt[[0, len(ids) // 2, len(ids) - 1]], ref, atol=1e-5)


def test_score_ids_refuses_a_stale_config_pad(rm, tok, ids):
    # HF pools at the rightmost token != config.pad_token_id: padding with any
    # other id would pool a pad position, so score_ids must refuse the mismatch
    pad = tok.pad_token_id
    rm.config.pad_token_id = tok.eos_token_id  # e.g. a hub config with pad = EOS
    try:
        with pytest.raises(ValueError, match="pad_token_id"):
            score_ids(rm, ids[:4], pad_id=pad, batch_size=4)
    finally:
        rm.config.pad_token_id = pad
    assert np.isfinite(score_ids(rm, ids[:4], pad_id=pad, batch_size=4)).all()


def test_score_ids_counts_each_batch_on_a_progress(rm, tok, ids, caplog):
    log = logging.getLogger("test.score_progress")
    progress = Progress("eval_rm", len(ids), unit="sequences", logger=log, every_s=0)
    with caplog.at_level(logging.INFO, logger="test.score_progress"):
        score_ids(rm, ids, pad_id=tok.pad_token_id, batch_size=5, progress=progress)
    done = [int(r.getMessage().split(":")[1].split("/")[0]) for r in caplog.records]
    # batches of 5 over len(ids) sequences: a line after each
    want = list(range(5, len(ids), 5)) + [len(ids)]
    assert len(want) >= 2 and done == want and progress.done == len(ids)
