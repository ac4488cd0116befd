r"""Candidate generation throughput: batched and length-bucketed vs one at a time.

    python benchmarks/generation.py [--policy results/models/sft/general] \
        [--prompts-per-domain 12] [--samples 16] [--batch-size 64] \
        [--max-new-tokens 128] [--peer-candidates 48] [--threads 1]

Samples replies to held-out prompts of the three tiny domains (test splits,
generated here) with the settings of ``bon.generate`` (T 1.0, top_p 1.0, top_k
off, EOS stops a reply) and prints candidates/s of:

- the named peer, a one-prompt-at-a-time loop: one ``model.generate`` call
  per candidate (batch of one, no padding), on the first ``--peer-candidates``
  candidates (a rate, so comparable with the runs over all of them);
- batched in prompt order: ``--batch-size`` sequences per call, prompts
  repeated ``--samples`` times as they come (a call may mix prompts of
  different lengths, left-padded);
- batched and length-bucketed: what ``generate_candidates`` and ``label_gold``
  run (:func:`pipelines.common.sampling.sample_texts`: the repeated prompts
  ordered by length first).

Also prints each batching's share of pad positions in the prompts. With
``--policy`` it samples from that folder (e.g. the tiny study's general SFT
policy, which stops at EOS like a real one); without it, from a random-init
tiny GPT-NeoX on a tokenizer trained here, which rarely emits EOS, so every
reply runs to ``--max-new-tokens``. Every run uses ``--threads`` torch threads
(the rules run generation with ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pipelines.build_prefs import BuildPrefsConfig, build_prefs
from pipelines.common.modeling import init_tiny_causal_lm, train_tokenizer
from pipelines.common.records import read_pairs
from pipelines.common.sampling import (
    encode_prompts,
    left_pad,
    load_policy,
    prompt_room,
    sample_texts,
    stop_token_ids,
)

DOMAINS = ("general", "math", "code")


def build_world(tmp: Path, per_domain: int) -> tuple[str, list]:
    """A random-init policy folder and the prompts of the three test splits."""
    prompts, texts = [], []
    for domain in DOMAINS:
        train, test = tmp / domain / "train.jsonl", tmp / domain / "test.jsonl"
        build_prefs(
            domain,
            [train, test],
            None,
            cfg=BuildPrefsConfig(sizes={"train": 60, "test": per_domain}, workers=1),
        )
        for path in (train, test):
            texts += [m["content"] for r in read_pairs(path) for m in r["chosen"]]
        prompts += [r["prompt"] for r in read_pairs(test)]
    tok = train_tokenizer(texts, vocab_size=2048)
    folder = tmp / "policy"
    init_tiny_causal_lm(tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder), prompts


def load_prompts(per_domain: int, tmp: Path) -> list:
    prompts = []
    for domain in DOMAINS:
        test = tmp / domain / "test.jsonl"
        build_prefs(
            domain,
            [tmp / domain / "train.jsonl", test],
            None,
            cfg=BuildPrefsConfig(sizes={"train": 1, "test": per_domain}, workers=1),
        )
        prompts += [r["prompt"] for r in read_pairs(test)]
    return prompts


def pad_share(lengths: list[int], batch_size: int) -> float:
    """Share of pad positions when ``lengths`` are batched in this order."""
    padded = 0
    for start in range(0, len(lengths), batch_size):
        chunk = lengths[start : start + batch_size]
        padded += max(chunk) * len(chunk)
    return 1.0 - sum(lengths) / padded


def _generate(policy, seqs, kwargs) -> None:
    """One ``generate`` call on left-padded prompts, stopping at EOS."""
    ids, mask = left_pad(seqs, policy.tok.pad_token_id, policy.device)
    with torch.no_grad():
        policy.model.generate(
            input_ids=ids,
            attention_mask=mask,
            pad_token_id=policy.tok.pad_token_id,
            eos_token_id=stop_token_ids(policy.model, policy.tok),
            **kwargs,
        )


def one_at_a_time(policy, prompt_ids, jobs, kwargs) -> int:
    """The peer: one ``generate`` call per candidate; returns candidates made."""
    for p in jobs:
        _generate(policy, [prompt_ids[p]], kwargs)
    return len(jobs)


def in_prompt_order(policy, prompt_ids, n, batch_size, kwargs) -> int:
    """Batched without bucketing: repeated prompts as they come."""
    jobs = [p for p in range(len(prompt_ids)) for _ in range(n)]
    for start in range(0, len(jobs), batch_size):
        rows = jobs[start : start + batch_size]
        _generate(policy, [prompt_ids[p] for p in rows], kwargs)
    return len(jobs)


def timed(fn) -> tuple[float, int]:
    torch.manual_seed(0)
    start = time.perf_counter()
    made = fn()
    return time.perf_counter() - start, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default=None, help="causal LM folder")
    parser.add_argument("--prompts-per-domain", type=int, default=12)
    parser.add_argument("--samples", type=int, default=16, help="replies per prompt")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--peer-candidates", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.policy is None:
            policy_path, prompts = build_world(Path(tmp), args.prompts_per_domain)
            what = "random-init tiny GPT-NeoX (replies run to max_new_tokens)"
        else:
            policy_path = args.policy
            prompts = load_prompts(args.prompts_per_domain, Path(tmp))
            what = args.policy
        policy = load_policy(
            policy_path,
            device="cpu",
            dtype="float32",
            trust_remote_code=False,
            chat_template=None,
            system_prompt=None,
        )
    room = prompt_room(policy.model, args.max_new_tokens)
    prompt_ids, _ = encode_prompts(
        policy.tok, prompts, max_length=room, system_prompt=policy.fmt.system_prompt
    )
    kwargs = {
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": args.max_new_tokens,
        "use_cache": True,
    }
    if policy.new_pad_row:
        kwargs["suppress_tokens"] = [policy.tok.pad_token_id]
    n, bs = args.samples, args.batch_size
    total = len(prompt_ids) * n
    lengths = [len(prompt_ids[p]) for p in range(len(prompt_ids)) for _ in range(n)]
    print(f"policy: {what}; {len(prompt_ids)} prompts x {n} samples = {total}")
    print(f"batch {bs}, max_new_tokens {args.max_new_tokens}, {args.threads} thread")
    peer_jobs = [p for p in range(len(prompt_ids)) for _ in range(n)]
    peer_jobs = peer_jobs[: args.peer_candidates]
    rows = [
        (
            "one at a time (peer)",
            timed(lambda: one_at_a_time(policy, prompt_ids, peer_jobs, kwargs)),
            0.0,
        ),
        (
            "batched, prompt order",
            timed(lambda: in_prompt_order(policy, prompt_ids, n, bs, kwargs)),
            pad_share(lengths, bs),
        ),
        (
            "batched, length-bucketed",
            timed(
                lambda: len(
                    sum(
                        sample_texts(
                            policy.model,
                            policy.tok,
                            prompt_ids,
                            n=n,
                            batch_size=bs,
                            generate_kwargs=kwargs,
                            device=policy.device,
                        )[0],
                        [],
                    )
                )
            ),
            pad_share(sorted(lengths, reverse=True), bs),
        ),
    ]
    peer_rate = rows[0][1][1] / rows[0][1][0]
    print(f"{'path':<26} {'cands':>6} {'s':>8} {'cands/s':>9} {'x peer':>7} pad")
    for name, (seconds, made), pad in rows:
        rate = made / seconds
        print(
            f"{name:<26} {made:>6} {seconds:>8.2f} {rate:>9.1f}"
            f" {rate / peer_rate:>7.1f} {pad:.1%}"
        )


if __name__ == "__main__":
    main()
