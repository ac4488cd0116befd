import dataclasses
import json
import logging
import re
import shutil

import pytest
import torch

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.chat_format import CHAT_TEMPLATE
from pipelines.common.io import read_jsonl
from pipelines.common.modeling import (
    TinyArch,
    chat_text,
    ensure_pad_embeddings,
    init_tiny_causal_lm,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    train_tokenizer,
)
from pipelines.common.records import read_pairs
from pipelines.common.sampling import encode_prompts, sample_texts
from pipelines.common.sandbox import set_backend
from pipelines.domains import VerifierOptions, code, math
from pipelines.generate_candidates import GenerateConfig, generate_candidates, main

from .bos_tokenizers import save_bos_tokenizer

ARCH = TinyArch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
SMALL = GenerateConfig(
    n_prompts=3, big_n=4, max_new_tokens=8, batch_size=5, workers=1, device="cpu"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models are latency-bound: on a shared 2-core box, two OpenMP threads
    # spin against other jobs and run several times slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _oracle_policy(src, dst, token_id):
    """A causal LM that emits ``token_id`` with probability ~1 at every step.

    The final LayerNorm outputs the constant e_0 (weight 0, bias e_0), and
    the LM head maps e_0 to logit 100 for ``token_id`` and 0 for the rest.
    """
    lm = load_causal_lm(src)
    with torch.no_grad():
        norm = lm.gpt_neox.final_layer_norm
        norm.weight.zero_()
        norm.bias.zero_()
        norm.bias[0] = 1.0
        head = lm.get_output_embeddings().weight
        head.zero_()
        head[token_id, 0] = 100.0
    lm.save_pretrained(dst)
    load_tokenizer(src).save_pretrained(dst)
    return str(dst)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    pairs = {}
    for domain, n in (("math", 5), ("code", 2)):
        pairs[domain] = root / domain / "test.jsonl"
        cfg = BuildPrefsConfig(sizes={"test": n}, sft_size=0, workers=1)
        build_prefs(domain, [pairs[domain]], None, cfg=cfg)
    texts = []
    for path in pairs.values():
        for rec in read_pairs(path):
            texts += [m["content"] for m in rec["chosen"] + rec["rejected"]]
    tok = train_tokenizer(texts, vocab_size=400)
    policy = root / "policy"
    init_tiny_causal_lm(tok, seed=0, arch=ARCH).save_pretrained(policy)
    tok.save_pretrained(policy)
    torch.manual_seed(0)
    rm = load_reward_model(policy)
    ensure_pad_embeddings(rm, tok)
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return {
        "root": root,
        "pairs": pairs,
        "policy": str(policy),
        "rm": str(root / "rm"),
        "bang": _oracle_policy(policy, root / "bang", tok.convert_tokens_to_ids("!")),
        "eos": _oracle_policy(policy, root / "eos", tok.eos_token_id),
    }


@pytest.fixture(scope="module")
def math_run(world):
    out = world["root"] / "math_seed0.jsonl"
    summary = generate_candidates(
        world["policy"], world["pairs"]["math"], out, seed=0, cfg=SMALL, domain="math"
    )
    return summary, read_jsonl(out)


def test_sampling_logs_progress_per_generate_call_and_a_final_line(
    world, tmp_path, caplog
):
    out = tmp_path / "gens.jsonl"
    with caplog.at_level(logging.INFO, logger="pipelines.common.sampling"):
        generate_candidates(
            world["policy"],
            world["pairs"]["math"],
            out,
            seed=0,
            cfg=SMALL,
            domain="math",
            progress_every=0.0,
        )
    line = re.compile(
        r"^generate_candidates: (\d+)/(\d+) sequences \(\S+%\), (\S+) sequences/s,"
        r" .*?( \(done\))?$"
    )
    found = [line.match(r.getMessage()) for r in caplog.records]
    lines = [(int(m[1]), int(m[2]), bool(m[4])) for m in found if m]
    # 3 prompts x 4 samples = 12 sequences, 5 per generate call: 5, 10, 12
    assert lines == [(5, 12, False), (10, 12, False), (12, 12, False), (12, 12, True)]
    assert all(float(m[3]) > 0 for m in found if m)


def texts_of(lines):
    return [c["text"] for ln in lines for c in ln["candidates"]]


def test_math_counts_fields_and_gold(world, math_run):
    summary, lines = math_run
    records = read_pairs(world["pairs"]["math"])[:3]
    assert [ln["prompt_id"] for ln in lines] == [r["id"] for r in records]
    for ln, rec in zip(lines, records, strict=True):
        assert ln["domain"] == "math"
        assert ln["prompt"] == rec["prompt"]
        assert ln["task"] == rec["metadata"]["task"]
        assert len(ln["candidates"]) == 4
        assert {c["source"] for c in ln["candidates"]} == {"policy"}
        assert set(ln["candidates"][0]) == {"text", "gold", "source"}
    assert summary["n_prompts"] == 3 and summary["n_candidates"] == 12
    assert summary["gold"] == "verifier:math"
    assert {json.dumps(ln["gold_source"]) for ln in lines} == {
        json.dumps({"kind": "verifier:math", "math_extraction": "balanced"})
    }
    assert 0 < summary["new_tokens"] <= 12 * 8 and summary["tokens_per_second"] > 0
    items = [(ln["task"], c["text"]) for ln in lines for c in ln["candidates"]]
    expected = [float(ok) for ok in math.verify_many(items, workers=1)]
    assert [c["gold"] for ln in lines for c in ln["candidates"]] == expected


def test_same_seed_same_candidates_other_seed_differs(world, math_run):
    _, lines = math_run
    again = world["root"] / "math_again.jsonl"
    generate_candidates(
        world["policy"], world["pairs"]["math"], again, seed=0, cfg=SMALL, domain="math"
    )
    assert texts_of(read_jsonl(again)) == texts_of(lines)
    other = world["root"] / "math_seed1.jsonl"
    rc = main(
        [
            "--policy",
            world["policy"],
            "--pairs",
            str(world["pairs"]["math"]),
            "--domain",
            "math",
            "--seed",
            "1",
            "--out",
            str(other),
            "--n-prompts",
            "3",
            "--big-n",
            "4",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "5",
            "--workers",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    got = texts_of(read_jsonl(other))
    assert len(got) == 12 and got != texts_of(lines)
    # samples of one prompt differ from each other too (sampling, not greedy)
    assert len(set(got[:4])) > 1


def test_only_new_tokens_are_decoded(world):
    out = world["root"] / "bang.jsonl"
    cfg = dataclasses.replace(SMALL, max_new_tokens=6)
    summary = generate_candidates(
        world["bang"], world["pairs"]["math"], out, seed=0, cfg=cfg, domain="math"
    )
    assert texts_of(read_jsonl(out)) == ["!" * 6] * 12
    assert summary["new_tokens"] == 12 * 6


def test_generation_stops_at_eos(world):
    out = world["root"] / "eos.jsonl"
    cfg = dataclasses.replace(SMALL, max_new_tokens=6)
    summary = generate_candidates(
        world["eos"], world["pairs"]["math"], out, seed=0, cfg=cfg, domain="math"
    )
    assert texts_of(read_jsonl(out)) == [""] * 12
    assert summary["new_tokens"] == 12  # one EOS each, nothing after it


def test_left_padded_batch_matches_single_prompts(world):
    tok = load_tokenizer(world["policy"])
    model = load_causal_lm(world["policy"]).eval()
    ensure_pad_embeddings(model, tok)
    records = read_pairs(world["pairs"]["math"])
    ids, cut = encode_prompts(tok, [r["prompt"] for r in records], max_length=None)
    assert cut == 0 and len({len(i) for i in ids}) > 1  # padding really happens
    assert tok.decode(ids[0]).endswith("<|assistant|>")  # the generation prompt
    greedy = {"do_sample": False, "max_new_tokens": 8}
    cpu = torch.device("cpu")
    batched, _ = sample_texts(
        model, tok, ids, n=1, batch_size=len(ids), generate_kwargs=greedy, device=cpu
    )
    alone = [
        sample_texts(
            model, tok, [i], n=1, batch_size=1, generate_kwargs=greedy, device=cpu
        )[0][0]
        for i in ids
    ]
    assert batched == alone
    assert len({t[0] for t in batched}) > 1  # the replies depend on the prompt


def test_long_prompts_are_cut_on_the_left_keeping_bos(world, tmp_path):
    records = read_pairs(world["pairs"]["math"])
    texts = [m["content"] for r in records for m in r["chosen"]]
    tok = load_tokenizer(save_bos_tokenizer(texts, tmp_path / "tok"))
    prompts = [r["prompt"] for r in records]
    full, cut = encode_prompts(tok, prompts, max_length=None)
    assert cut == 0 and all(ids[0] == tok.bos_token_id for ids in full)
    limit = min(len(ids) for ids in full) - 2
    ids, cut = encode_prompts(tok, prompts, max_length=limit)
    assert cut == len(prompts)
    # the HF tokenizer's own left truncation of the same text (BOS string of
    # the template removed; the tokenizer adds BOS itself)
    tok.truncation_side = "left"
    strip = [
        tok.apply_chat_template(
            p, tokenize=False, add_generation_prompt=True
        ).removeprefix("<s>")
        for p in prompts
    ]
    assert ids == tok(strip, truncation=True, max_length=limit)["input_ids"]
    for got, whole in zip(ids, full, strict=True):
        assert got[0] == tok.bos_token_id and got.count(tok.bos_token_id) == 1
        assert got[1:] == whole[len(whole) - limit + 1 :]  # the prompt's end


def test_policy_samples_with_its_recorded_system_prompt(world, tmp_path, monkeypatch):
    policy = tmp_path / "policy"
    shutil.copytree(world["policy"], policy)
    record = {"chat_template": CHAT_TEMPLATE, "system_prompt": "Think step by step."}
    (policy / "run_config.json").write_text(json.dumps({"chat_format": record}))
    pairs = world["pairs"]["math"]
    fed = []  # the prompt ids each run hands to the sampler

    def spy(model, tok, prompt_ids, **kw):
        fed.append([list(p) for p in prompt_ids])
        return sample_texts(model, tok, prompt_ids, **kw)

    monkeypatch.setattr("pipelines.common.sampling.sample_texts", spy)

    def run(name, **kw):
        out = tmp_path / f"{name}.jsonl"
        cfg = dataclasses.replace(SMALL, **kw)
        generate_candidates(str(policy), pairs, out, seed=0, cfg=cfg, domain="math")
        return read_jsonl(out), fed[-1]

    default, ids_default = run("default")
    explicit, ids_explicit = run("explicit", system_prompt="Think step by step.")
    none, ids_none = run("none", system_prompt="")
    other, ids_other = run("other", system_prompt="Be wrong.")
    tok = load_tokenizer(world["policy"])

    def hf_ids(system):  # the template through the HF tokenizer, by hand
        head = [{"role": "system", "content": system}] if system else []
        texts = [
            tok.apply_chat_template(
                head + r["prompt"], tokenize=False, add_generation_prompt=True
            )
            for r in read_pairs(pairs)[:3]
        ]
        return tok(texts)["input_ids"]

    assert ids_default == ids_explicit == hf_ids("Think step by step.")
    assert ids_none == hf_ids(None) and ids_other == hf_ids("Be wrong.")
    assert texts_of(default) == texts_of(explicit)
    fmt = default[0]["chat_format"]
    assert fmt["system_prompt"] == "Think step by step."
    assert fmt["system_prompt_source"] == str(policy / "run_config.json")
    assert none[0]["chat_format"]["system_prompt"] is None
    assert other[0]["chat_format"]["system_prompt_source"] == "config"
    # the recorded prompt stays the record's own turns: scorers add their own
    assert all(ln["prompt"] == d["prompt"] for ln, d in zip(none, default, strict=True))
    assert not any(m["role"] == "system" for m in default[0]["prompt"])


def test_code_adds_reference_and_mutant(world):
    out = world["root"] / "code.jsonl"
    cfg = dataclasses.replace(SMALL, n_prompts=2, big_n=2)
    summary = generate_candidates(
        world["policy"], world["pairs"]["code"], out, seed=0, cfg=cfg, domain="code"
    )
    lines = read_jsonl(out)
    records = read_pairs(world["pairs"]["code"])
    assert len(lines) == 2
    for ln, rec in zip(lines, records, strict=True):
        cands = ln["candidates"]
        assert [c["source"] for c in cands] == [
            "policy",
            "policy",
            "reference",
            "mutant",
        ]
        assert cands[2]["text"] == rec["chosen"][-1]["content"]
        assert cands[3]["text"] == rec["rejected"][-1]["content"]
        assert cands[2]["gold"] == 1.0 and cands[3]["gold"] == 0.0
        items = [(ln["task"], c["text"]) for c in cands]
        assert [c["gold"] for c in cands] == [
            float(ok) for ok in code.verify_many(items, workers=1)
        ]
    assert summary["mean_gold"]["reference"] == 1.0
    assert summary["mean_gold"]["mutant"] == 0.0
    assert summary["n_by_source"] == {"policy": 4, "reference": 2, "mutant": 2}
    from pipelines.common.sandbox import backend

    assert lines[0]["gold_source"] == {"kind": "verifier:code", "sandbox": backend()}

    # the weak backend, asked for by name, is what the file says ran
    try:
        weak = world["root"] / "code_rlimit.jsonl"
        generate_candidates(
            world["policy"],
            world["pairs"]["code"],
            weak,
            seed=0,
            cfg=dataclasses.replace(cfg, n_prompts=1),
            domain="code",
            verifier=VerifierOptions(sandbox_backend="rlimit"),
        )
        assert read_jsonl(weak)[0]["gold_source"]["sandbox"] == "rlimit"
    finally:
        set_backend(None)  # later tests use the default again

    only_ref = world["root"] / "code_ref.jsonl"
    cfg = dataclasses.replace(cfg, n_prompts=1, max_new_tokens=2, include_mutants=False)
    generate_candidates(
        world["bang"], world["pairs"]["code"], only_ref, seed=0, cfg=cfg, domain="code"
    )
    (ln,) = read_jsonl(only_ref)
    assert [c["source"] for c in ln["candidates"]] == ["policy", "policy", "reference"]


def test_gold_model_scores(world, math_run):
    out = world["root"] / "gold_rm.jsonl"
    cfg = dataclasses.replace(SMALL, gold_model=world["rm"])
    summary = generate_candidates(
        world["policy"], world["pairs"]["math"], out, seed=0, cfg=cfg, domain="math"
    )
    lines = read_jsonl(out)
    assert summary["gold"] == f"model:{world['rm']}"
    assert texts_of(lines) == texts_of(math_run[1])  # same seed, same samples
    tok = load_tokenizer(world["rm"])
    rm = load_reward_model(world["rm"]).eval()
    expected = []
    with torch.no_grad():
        for ln in lines:
            for c in ln["candidates"]:
                conv = [*ln["prompt"], {"role": "assistant", "content": c["text"]}]
                ids = tok(chat_text(tok, conv), return_tensors="pt")["input_ids"]
                expected.append(rm(input_ids=ids).logits[0, 0].item())
    got = [c["gold"] for ln in lines for c in ln["candidates"]]
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(got)) > 1
    assert lines[0]["gold_chat_format"]["system_prompt"] is None
    assert lines[0]["gold_source"] == {"kind": f"model:{world['rm']}"}
    assert lines[0]["gold_chat_format"]["chat_template_is_rmflow_default"] is True


def test_domain_without_verifier_fails_before_sampling(world, tmp_path):
    with pytest.raises(ValueError, match="no generator"):
        generate_candidates(
            "no/such-policy",
            world["pairs"]["math"],
            tmp_path / "x.jsonl",
            seed=0,
            cfg=SMALL,
            domain="poetry",
        )
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    "bad", [{"big_n": 0}, {"top_p": 0.0}, {"temperature": 0.0}, {"dtype": "fp8"}]
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        GenerateConfig(**bad)


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--policy",
        "--pairs",
        "--domain",
        "--seed",
        "--out",
        "--n-prompts",
        "--big-n",
        "--temperature",
        "--top-p",
        "--max-new-tokens",
        "--batch-size",
        "--include-reference",
        "--include-mutants",
        "--gold-model",
        "--workers",
    ):
        assert flag in text
