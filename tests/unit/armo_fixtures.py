"""Offline parts for the ArmoRM tests: a tiny RM backbone, pair records, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from pipelines.common.armo.gating import DEFAULT_GRID, network_class, save_gating
from pipelines.common.io import write_jsonl
from pipelines.common.modeling import (
    TinyArch,
    init_tiny_causal_lm,
    load_reward_model,
    train_tokenizer,
)

ARCH = TinyArch(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
WORDS = "the answer is seven because two plus five makes seven def f return x sky"


def make_backbone(root: Path) -> Path:
    """A tiny GPT-NeoX RM folder (seeded head) with its tokenizer."""
    tok = train_tokenizer([f"{WORDS} {i}" for i in range(50)], vocab_size=300)
    init_tiny_causal_lm(tok, seed=0, arch=ARCH).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    torch.manual_seed(3)
    model = load_reward_model(root / "lm")
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return root / "rm"


def conv(user: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def pair_records(n: int, domain: str = "math", long_every: int = 0) -> list[dict]:
    """Standard pair records of varied lengths (every ``long_every``-th long)."""
    out = []
    for i in range(n):
        prompt = f"what is {i} plus five " + "two " * (i % 3)
        good = "seven " * (i % 5 + 1) + "because"
        if long_every and i % long_every == 0:
            good += " two" * 60
        out.append(
            {
                "id": f"{domain}-{i:03d}",
                "domain": domain,
                "subset": "s",
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": conv(prompt, good),
                "rejected": conv(prompt, "x " * (i % 4 + 1)),
                "attributes": {
                    "chosen": {
                        "correctness": 1.0,
                        "verbosity": 3.0 + i % 3,
                        "format": 1.0,
                    },
                    "rejected": {"correctness": 0.0, "verbosity": 1.0, "format": None},
                },
                "metadata": {"spurious": {"politeness": i % 2 == 0}},
            }
        )
    return out


def write_pairs(path: Path, records: list[dict]) -> Path:
    write_jsonl(path, records)
    return path


def write_regression(path: Path, weight: np.ndarray, names: list[str]) -> Path:
    meta = {"attributes": json.dumps(names), "alphas": json.dumps([1.0] * len(names))}
    save_file({"weight": weight.astype(np.float32)}, str(path), metadata=meta)
    return path


def write_gating(
    path: Path, dim: int, names: list[str], *, v: int = 1, seed: int = 0
) -> Path:
    """A randomly initialised gating file with a non-trivial debiasing T."""
    torch.manual_seed(seed)
    k = len(names)
    net = network_class()(dim, k, hidden_size=8, layers=2, temperature=0.5)
    lambdas = np.linspace(0.1, 0.5, k).astype(np.float32)
    lambdas[v] = 1.0
    transform = np.eye(k, dtype=np.float32)
    transform[v, :] -= lambdas
    meta = {
        "attributes": names,
        "in_features": dim,
        "hidden_size": 8,
        "layers": 2,
        "dropout": 0.0,
        "temperature": 0.5,
        "debias_attribute": names[v],
        "tau": 0.03,
        "grid": list(DEFAULT_GRID),
        "train_on_debiased": True,
    }
    save_gating(path, net, transform=transform, lambdas=lambdas, meta=meta)
    return path
