"""Chat template and system prompt: explicit config, else what a model was trained with.

Every stage that turns messages into text (SFT, RM training, generation,
scoring, evaluation) resolves one :class:`ChatFormat` for its model:

- **chat template**: the configured one (a Jinja string, or a file holding
  one); else the template recorded in the model's ``run_config.json``
  (``chat_format.chat_template``, written by train_sft, train_rm and
  merge_dogerm); else the tokenizer's own (rmflow's :data:`CHAT_TEMPLATE` when
  the tokenizer ships none, see ``modeling.load_tokenizer``).
- **system prompt**: the configured one (``""`` means none); else the one
  recorded in ``run_config.json``; else none. When set, it is prepended as a
  ``system`` turn to every conversation that has none.

Nothing here looks at the text of a model's path: DogeRM's scripts pick the
Llama-2 system prompt when the path contains "llama2" and so score merged
models saved elsewhere without the prompt their RM was trained with
(ALGORITHMS.md section 4.3 [BUG]).

This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
RUN_CONFIG_KEY = "chat_format"  # the entry of run_config.json written here

# OpenAssistant-style turns (as tlc4418/llm_optimization formats its data):
# <|user|>text<|endoftext|><|assistant|>reply<|endoftext|>
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|endoftext|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
_JINJA_MARKS = ("{{", "{%")

# Where a setting came from (recorded in every output); a setting read from a
# model's run_config.json records that file's path or hub location instead.
FROM_CONFIG = "config"
FROM_TOKENIZER = "tokenizer"
FROM_NOWHERE = "none"


@dataclass(frozen=True)
class ChatFormat:
    """The chat template and system prompt a stage used, and where each came from."""

    template: str
    system_prompt: str | None
    template_source: str
    system_prompt_source: str

    def record(self, *, with_template: bool = True) -> dict[str, object]:
        """The format as JSON for outputs (run_config.json, eval JSON, gens...).

        Args:
            with_template: include the template text itself (run_config.json
                needs it to pass the format on; per-line records do not).

        Returns:
            ``system_prompt``, ``chat_template_sha256``,
            ``chat_template_is_rmflow_default``, the two sources and, with
            ``with_template``, ``chat_template``.
        """
        out: dict[str, object] = {
            "system_prompt": self.system_prompt,
            "system_prompt_source": self.system_prompt_source,
            "chat_template_sha256": template_sha256(self.template),
            "chat_template_is_rmflow_default": self.template == CHAT_TEMPLATE,
            "chat_template_source": self.template_source,
        }
        if with_template:
            out["chat_template"] = self.template
        return out


def template_sha256(template: str) -> str:
    """SHA-256 of a template's UTF-8 text."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def with_system_prompt(
    messages: Sequence[Mapping[str, str]], system_prompt: str | None
) -> list[Mapping[str, str]]:
    """``messages`` with a leading system turn when a prompt is set and none exists.

    Args:
        messages: one conversation.
        system_prompt: the prompt; None or ``""`` adds nothing.

    Returns:
        A new list (the input is not modified).
    """
    if not system_prompt or any(m.get("role") == "system" for m in messages):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def load_chat_template(value: str) -> str:
    """A configured chat template: Jinja text as given, or the text of a file.

    Args:
        value: Jinja text (holds ``{{`` or ``{%``) or a path to a file.

    Returns:
        The template text.

    Raises:
        ValueError: an empty value, a path that is not a file, or an empty file.
    """
    if any(mark in value for mark in _JINJA_MARKS):
        return value
    path = Path(value)
    if not value.strip() or not path.is_file():
        raise ValueError(
            f"chat_template {value!r} is neither a Jinja template (no '{{{{' or"
            " '{%') nor an existing file"
        )
    text = path.read_text(encoding="utf-8")
    if not any(mark in text for mark in _JINJA_MARKS):
        raise ValueError(f"chat_template file {path} holds no Jinja template")
    return text


def read_run_config(model: str | Path) -> tuple[dict | None, str]:
    """The ``run_config.json`` of a model folder or hub repo, if it has one.

    A local folder is read directly. A hub id is looked up through
    transformers' cache (fetched when online, read from the cache offline);
    a repo without the file, or one the hub cannot be asked about, gives None.

    Args:
        model: a local folder or a hub id.

    Returns:
        ``(contents or None, where it was looked for)``.

    Raises:
        ValueError: the file exists but is not a JSON object.
    """
    folder = Path(model)
    if folder.is_dir():
        path: Path | None = folder / RUN_CONFIG
        if not path.is_file():
            path = None
        where = str(folder / RUN_CONFIG)
    else:
        from transformers.utils import cached_file

        found = cached_file(
            str(model),
            RUN_CONFIG,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        path = Path(found) if found else None
        where = f"{model}/{RUN_CONFIG}"
    if path is None:
        return None, where
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data, where


def recorded_chat_format(model: str | Path) -> tuple[dict | None, str]:
    """The ``chat_format`` entry of a model's ``run_config.json`` (None if absent).

    Raises:
        ValueError: the entry exists but its ``chat_template`` is not a string
            or its ``system_prompt`` is neither a string nor null.
    """
    run_config, where = read_run_config(model)
    entry = (run_config or {}).get(RUN_CONFIG_KEY)
    if entry is None:
        return None, where
    template = entry.get("chat_template") if isinstance(entry, dict) else None
    if not isinstance(template, str) or not template:
        raise ValueError(
            f"{where}: field {RUN_CONFIG_KEY}.chat_template must be a non-empty"
            f" string, got {template!r}"
        )
    prompt = entry.get("system_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(
            f"{where}: field {RUN_CONFIG_KEY}.system_prompt must be a string or"
            f" null, got {prompt!r}"
        )
    return entry, where


def _tokenizer_template(tok: PreTrainedTokenizerBase) -> str | None:
    template = tok.chat_template
    if isinstance(template, dict):  # named templates: apply_chat_template's default
        template = template.get("default")
    return template or None


def setup_chat_format(
    tok: PreTrainedTokenizerBase,
    model: str | Path,
    *,
    chat_template: str | None,
    system_prompt: str | None,
) -> ChatFormat:
    """Resolve a model's chat format and set its template on ``tok``.

    Args:
        tok: the tokenizer used with ``model``; its ``chat_template`` is
            replaced by the resolved one (so a saved tokenizer carries it).
        model: the folder or hub id whose ``run_config.json`` holds the format
            the model was trained with.
        chat_template: configured template (Jinja text or a file); None = the
            recorded one, else the tokenizer's.
        system_prompt: configured prompt; ``""`` = none; None = the recorded
            one, else none.

    Returns:
        The resolved format (logged).

    Raises:
        ValueError: a bad configured template, a malformed recorded format, or
            no template anywhere.
    """
    recorded, where = recorded_chat_format(model)
    if chat_template is not None:
        template, template_source = load_chat_template(chat_template), FROM_CONFIG
    elif recorded is not None:
        template, template_source = recorded["chat_template"], where
    else:
        template, template_source = _tokenizer_template(tok), FROM_TOKENIZER
    if template is None:
        raise ValueError(
            f"{model}: no chat template (none configured, none in {where}, none in"
            " its tokenizer)"
        )
    if system_prompt is not None:
        prompt, prompt_source = (system_prompt or None), FROM_CONFIG
    elif recorded is not None:
        prompt, prompt_source = (recorded.get("system_prompt") or None), where
    else:
        prompt, prompt_source = None, FROM_NOWHERE
    tok.chat_template = template
    fmt = ChatFormat(
        template=template,
        system_prompt=prompt,
        template_source=template_source,
        system_prompt_source=prompt_source,
    )
    logger.info(
        "%s: chat template %s (from %s%s), system prompt %r (from %s)",
        model,
        template_sha256(template)[:12],
        template_source,
        ", rmflow default" if template == CHAT_TEMPLATE else "",
        prompt,
        prompt_source,
    )
    return fmt
