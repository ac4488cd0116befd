"""The assembled ArmoRM: backbone + ridge ``W`` + debiasing ``T`` + gating.

    from pipelines.common.armo.model import load_armo
    armo = load_armo("results/models/armo/rm-general-seed0")
    out = armo.score([{"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}])
    out.score, out.rewards["correctness"], out.gates["correctness"]

A model folder (written by ``build_armo``) holds the frozen backbone
(``save_pretrained`` of its ``AutoModel``, with its tokenizer and
``run_config.json``), ``regression.safetensors`` (``fit_ridge``),
``gating.safetensors`` (``train_gating``) and ``armo_config.json`` (the
attribute names, the assistant-turn pattern, where the parts came from). The
score of a conversation (ALGORITHMS.md section 3, the released model's
formula)::

    r = W h_last            per-attribute rewards, [K]
    g = gating(h_prompt)    softmax over attributes x logit_scale, [K]
    s = sum_k g_k (r T)_k   (r T)_k = r_k - lambda_k r_verbosity

:class:`ArmoHead` is that formula on embeddings; ``eval_armo`` applies it to
extracted embeddings and the scorer (:class:`ArmoRewardModel`, which
:func:`pipelines.common.scoring.load_scorer` loads for such a folder) to the
backbone's hidden states, so both score with one mechanism.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from pipelines.common.cli import UserError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "armo_config.json"
REGRESSION_FILE = "regression.safetensors"
GATING_FILE = "gating.safetensors"
FORMAT = "rmflow-armo-v1"


class ArmoModelError(UserError, ValueError):
    """An ArmoRM folder is incomplete or inconsistent."""


def is_armo_folder(path: str | Path) -> bool:
    """True for a folder written by ``build_armo``."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_regression(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """``W [K, D]`` float32 and the attribute names of a regression file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArmoModelError(f"{path}: no such regression file")
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        if "weight" not in fh.keys() or "attributes" not in meta:
            raise ArmoModelError(f"{path}: needs tensor 'weight' and 'attributes'")
        weight = fh.get_tensor("weight").astype(np.float32)
    names = list(json.loads(meta["attributes"]))
    if weight.shape[0] != len(names):
        raise ArmoModelError(
            f"{path}: weight has {weight.shape[0]} rows for {len(names)} attributes"
        )
    return weight, names


def _head_class() -> type:
    import torch
    from torch import nn

    class ArmoHead(nn.Module):
        """Embeddings -> (score, rewards, gates), the released model's formula."""

        def __init__(
            self, weight: np.ndarray, transform: np.ndarray, gating: nn.Module
        ) -> None:
            super().__init__()
            self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
            self.register_buffer(
                "transform", torch.as_tensor(transform, dtype=torch.float32)
            )
            self.gating = gating.eval()

        def forward(
            self, h_last: torch.Tensor, h_prompt: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Scores ``[B]``, rewards ``[B, K]`` and gates ``[B, K]``."""
            rewards = h_last.float() @ self.weight.T
            gates = self.gating(h_prompt.float())
            score = (gates * (rewards @ self.transform)).sum(dim=-1)
            return score, rewards, gates

    return ArmoHead


def load_head(regression: str | Path, gating: str | Path) -> torch.nn.Module:
    """The :class:`ArmoHead` of a regression file and a gating file.

    Raises:
        ArmoModelError: when their attributes differ.
    """
    from pipelines.common.armo.gating import load_gating

    weight, names = read_regression(regression)
    net, transform, meta = load_gating(gating)
    if list(meta.get("attributes", names)) != names:
        raise ArmoModelError(
            f"{gating}: attributes {meta.get('attributes')} differ from"
            f" {regression}'s {names}"
        )
    head = _head_class()(weight, transform, net)
    head.attributes = names
    return head.eval()


@dataclass(frozen=True)
class ArmoOutput:
    """One conversation's ArmoRM score, per-attribute rewards and gates."""

    score: float
    rewards: dict[str, float]
    gates: dict[str, float]


def _model_class() -> type:
    import torch
    from torch import nn

    from pipelines.common.armo.backbone import hidden_states, last_occurrence

    class ArmoRewardModel(nn.Module):
        """Backbone + head, scoring right-padded id batches like an RM.

        ``forward(input_ids, attention_mask).logits`` is ``[B, 1]`` (what
        :func:`pipelines.common.modeling.score_ids` reads); ``config`` is the
        backbone's, with ``pad_token_id`` set to the tokenizer's.
        """

        def __init__(self, backbone: nn.Module, head: nn.Module, pattern: list[int]):
            super().__init__()
            self.backbone, self.head, self.pattern = backbone, head, list(pattern)
            self.config = backbone.config
            self.last_rewards: torch.Tensor | None = None
            self.last_gates: torch.Tensor | None = None
            self.n_without_prompt = 0

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> SimpleNamespace:
            """Scores of a batch as ``logits [B, 1]``; rewards and gates kept."""
            states = hidden_states(self.backbone, input_ids, attention_mask)
            lengths = attention_mask.sum(dim=1)
            seqs = [row[:n].tolist() for row, n in zip(input_ids, lengths, strict=True)]
            # a sequence truncated on the left may have lost its prompt: it is
            # gated at its first kept token (the nearest to the prompt), counted
            found = [last_occurrence(seq, self.pattern) for seq in seqs]
            lost = sum(pos < 0 for pos in found)
            if lost:
                self.n_without_prompt += lost
                logger.warning(
                    "%d sequences without the assistant-turn pattern (cut by"
                    " truncation?) are gated at their first token; %d so far",
                    lost,
                    self.n_without_prompt,
                )
            found = [max(pos, 0) for pos in found]
            at = torch.as_tensor(found, device=states.device)
            rows = torch.arange(len(seqs), device=states.device)
            score, rewards, gates = self.head(
                states[rows, lengths - 1], states[rows, at]
            )
            self.last_rewards, self.last_gates = rewards, gates
            return SimpleNamespace(logits=score[:, None])

    return ArmoRewardModel


@dataclass
class LoadedArmo:
    """A loaded ArmoRM and its tokenizer (chat format set from the folder)."""

    model: torch.nn.Module
    tok: object
    attributes: list[str]
    system_prompt: str | None

    def score(self, messages: Sequence[Mapping[str, str]]) -> ArmoOutput:
        """Score, rewards and gates of one conversation ending in a reply."""
        import torch

        from pipelines.common.armo.backbone import encode_texts
        from pipelines.common.modeling import pad_batch

        ids = encode_texts(self.tok, [messages], self.system_prompt)
        device = next(self.model.parameters()).device
        batch, mask = pad_batch(ids, 0, device)
        with torch.no_grad():
            score = float(self.model(batch, mask).logits[0, 0])
        rewards = self.model.last_rewards[0].cpu().tolist()
        gates = self.model.last_gates[0].cpu().tolist()
        return ArmoOutput(
            score=score,
            rewards=dict(zip(self.attributes, rewards, strict=True)),
            gates=dict(zip(self.attributes, gates, strict=True)),
        )


def read_config(folder: str | Path) -> dict:
    """The folder's ``armo_config.json``, checked."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ArmoModelError(f"{folder}: no {CONFIG_FILE} (not an ArmoRM folder)")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ArmoModelError(f"{path}: format {config.get('format')!r}, not {FORMAT}")
    return config


def armo_model(
    folder: str | Path,
    tok: object,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """The :class:`ArmoRewardModel` of a folder, in eval mode on ``device``.

    ``tok`` is the tokenizer it will be fed by (its pad id goes in the config).
    """
    from pipelines.common.armo.backbone import load_backbone
    from pipelines.common.modeling import resolve_device

    folder = Path(folder)
    config = read_config(folder)
    dev = resolve_device(device)
    backbone = load_backbone(
        str(folder), dtype=dtype, device=dev, trust_remote_code=trust_remote_code
    )
    backbone.config.pad_token_id = tok.pad_token_id
    head = load_head(folder / REGRESSION_FILE, folder / GATING_FILE).to(dev)
    return _model_class()(backbone, head, config["pattern"]).eval()


def load_armo(
    folder: str | Path,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedArmo:
    """Load an ArmoRM folder: :meth:`LoadedArmo.score` gives score, rewards, gates.

    The chat format is the folder's ``run_config.json`` (the backbone's).

    Raises:
        ArmoModelError: on a folder that is not a complete ArmoRM.
    """
    from pipelines.common.chat_format import setup_chat_format
    from pipelines.common.modeling import load_tokenizer

    tok = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    fmt = setup_chat_format(tok, folder, chat_template=None, system_prompt=None)
    model = armo_model(
        folder, tok, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    return LoadedArmo(
        model=model,
        tok=tok,
        attributes=list(model.head.attributes),
        system_prompt=fmt.system_prompt,
    )
