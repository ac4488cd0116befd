"""Chat template and system prompt resolution (pipelines/common/chat_format.py)."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from pipelines.common.chat_format import (
    CHAT_TEMPLATE,
    load_chat_template,
    read_run_config,
    setup_chat_format,
    with_system_prompt,
)
from pipelines.common.modeling import load_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
OTHER = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
)
RECORDED = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    tok = train_tokenizer([f"alpha beta gamma {i}" for i in range(50)], vocab_size=300)
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return path


def _model_dir(tmp_path, tok_dir, chat_format):
    """A model folder (tokenizer files) with a run_config.json recording a format."""
    folder = tmp_path / "model"
    folder.mkdir()
    for f in tok_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    if chat_format is not ...:
        run = {"stage": "train_rm", "chat_format": chat_format}
        (folder / "run_config.json").write_text(json.dumps(run))
    return folder


def test_with_system_prompt():
    conv = [{"role": "user", "content": "hi"}]
    assert with_system_prompt(conv, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert conv == [{"role": "user", "content": "hi"}]  # not modified
    assert with_system_prompt(conv, None) == conv
    assert with_system_prompt(conv, "") == conv
    own = [{"role": "system", "content": "Own."}, *conv]
    assert with_system_prompt(own, "Be brief.") == own  # a system turn exists


def test_load_chat_template_text_or_file(tmp_path):
    assert load_chat_template(OTHER) == OTHER
    path = tmp_path / "t.jinja"
    path.write_text(OTHER)
    assert load_chat_template(str(path)) == OTHER
    with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path / "nope.j")))):
        load_chat_template(str(tmp_path / "nope.j"))
    plain = tmp_path / "plain.txt"
    plain.write_text("no template here")
    with pytest.raises(ValueError, match="holds no Jinja"):
        load_chat_template(str(plain))
    with pytest.raises(ValueError, match="neither a Jinja"):
        load_chat_template("")


def test_recorded_format_is_the_default(tmp_path, tok_dir):
    folder = _model_dir(
        tmp_path,
        tok_dir,
        {"chat_template": RECORDED, "system_prompt": "You are terse."},
    )
    tok = load_tokenizer(folder)
    assert tok.chat_template == CHAT_TEMPLATE  # the tokenizer's own
    fmt = setup_chat_format(tok, folder, chat_template=None, system_prompt=None)
    assert fmt.template == RECORDED and tok.chat_template == RECORDED
    assert fmt.system_prompt == "You are terse."
    where = str(folder / "run_config.json")
    assert fmt.template_source == fmt.system_prompt_source == where
    rec = fmt.record()
    assert rec["chat_template"] == RECORDED
    assert rec["chat_template_sha256"] == hashlib.sha256(RECORDED.encode()).hexdigest()
    assert rec["chat_template_is_rmflow_default"] is False
    assert "chat_template" not in fmt.record(with_template=False)


def test_explicit_config_wins_over_run_config(tmp_path, tok_dir):
    folder = _model_dir(
        tmp_path, tok_dir, {"chat_template": RECORDED, "system_prompt": "Recorded."}
    )
    path = tmp_path / "t.jinja"
    path.write_text(OTHER)
    tok = load_tokenizer(folder)
    fmt = setup_chat_format(tok, folder, chat_template=str(path), system_prompt="")
    assert (fmt.template, fmt.system_prompt) == (OTHER, None)
    assert fmt.template_source == fmt.system_prompt_source == "config"
    assert tok.chat_template == OTHER
    fmt = setup_chat_format(tok, folder, chat_template=None, system_prompt="Mine.")
    assert (fmt.template, fmt.system_prompt) == (RECORDED, "Mine.")


@pytest.mark.parametrize("recorded", [..., None])
def test_without_a_record_the_tokenizer_template_and_no_prompt(
    tmp_path, tok_dir, recorded
):
    folder = _model_dir(tmp_path, tok_dir, recorded)  # no file / chat_format null
    tok = load_tokenizer(folder)
    fmt = setup_chat_format(tok, folder, chat_template=None, system_prompt=None)
    assert fmt.template == CHAT_TEMPLATE and fmt.system_prompt is None
    assert (fmt.template_source, fmt.system_prompt_source) == ("tokenizer", "none")
    assert fmt.record()["chat_template_is_rmflow_default"] is True


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"chat_template": 5, "system_prompt": None}, "chat_format.chat_template"),
        ({"system_prompt": "x"}, "chat_format.chat_template"),
        ({"chat_template": RECORDED, "system_prompt": 3}, "chat_format.system_prompt"),
    ],
)
def test_malformed_record_names_file_and_field(tmp_path, tok_dir, entry, field):
    folder = _model_dir(tmp_path, tok_dir, entry)
    tok = load_tokenizer(folder)
    with pytest.raises(ValueError, match=re.escape(field)) as err:
        setup_chat_format(tok, folder, chat_template=None, system_prompt=None)
    assert str(folder / "run_config.json") in str(err.value)


def test_run_config_not_json_is_named(tmp_path, tok_dir):
    folder = _model_dir(tmp_path, tok_dir, ...)
    (folder / "run_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="run_config.json: not valid JSON"):
        read_run_config(folder)


def test_hub_id_reads_run_config_from_the_hub_cache(tmp_path, tok_dir, monkeypatch):
    """A hub id resolves through the hub cache (offline here), like a folder."""
    folder = _model_dir(
        tmp_path, tok_dir, {"chat_template": RECORDED, "system_prompt": "Hub."}
    )
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny-rm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    tok = load_tokenizer(folder)
    fmt = setup_chat_format(tok, "org/tiny-rm", chat_template=None, system_prompt=None)
    assert (fmt.template, fmt.system_prompt) == (RECORDED, "Hub.")
    assert fmt.template_source == "org/tiny-rm/run_config.json"
    # a hub id without the file (not in the cache): the tokenizer's, no prompt
    fmt = setup_chat_format(tok, "org/absent", chat_template=None, system_prompt=None)
    assert fmt.system_prompt is None and fmt.template_source == "tokenizer"


def test_no_stage_picks_a_prompt_by_path_text():
    """ALGORITHMS.md 4.3 [BUG]: nothing may choose a prompt or template by a
    substring of a model path (DogeRM: 'llama2' in path, 'mistral' in path)."""
    pattern = re.compile(
        r"""["'](llama|llama2|llama-2|mistral|gemma|qwen)["']\s+(not\s+)?in\b""",
        re.IGNORECASE,
    )
    # the pattern catches DogeRM's own lines (run_rm.py, inference_autoj.py)
    assert pattern.search('if "mistral" not in args.model:')
    assert pattern.search("sys = LLAMA2_SYS if 'llama2' in model_path else ''")
    hits = []
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []
