r"""Assemble the ArmoRM model folder: backbone + ridge W + debiasing T + gating.

    python -m pipelines.build_armo --backbone results/models/rm/general/seed0 \
        --regression results/armo/regression.safetensors \
        --gating results/armo/gating.safetensors \
        --out results/models/armo/rm-general-seed0

The folder (:mod:`pipelines.common.armo.model`) holds the frozen backbone as
``AutoModel`` (``save_pretrained`` in ``--dtype``, its head dropped), its
tokenizer, ``run_config.json`` with the chat format the embeddings were
extracted under, copies of the regression and gating files and
``armo_config.json`` (attributes, the assistant-turn pattern, the sources).
It is self-contained, like the released ArmoRM-Llama3-8B: scoring reads
nothing else, and ``score_model`` / ``eval_rm`` / best-of-n score it as any RM
(:func:`pipelines.common.armo.model.load_armo` also gives per-attribute
rewards and gates). Written whole or not at all. ``--help`` loads no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipelines.common.cli import (
    add_dataclass_args,
    dataclass_from_args,
    field_help,
    handle_user_errors,
)
from pipelines.common.io import atomic_dir, write_json
from pipelines.common.logs import library_versions, log_run_header, setup_logging

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class BuildArmoConfig:
    """How the backbone is saved and read (YAML ``armo.extract``, same names)."""

    dtype: str = field_help("backbone weights saved", choices=DTYPES, default="float32")
    chat_template: str | None = field_help(
        "chat template (Jinja text or a file); None: the backbone's", default=None
    )
    system_prompt: str | None = field_help(
        "system prompt ('' = none); None: the backbone's", default=None
    )
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)


def build_armo(
    backbone: str,
    regression: Path,
    gating: Path,
    out: Path,
    *,
    cfg: BuildArmoConfig | None = None,
) -> dict:
    """Write the ArmoRM folder ``out``; returns its ``armo_config.json``.

    Raises:
        pipelines.common.armo.model.ArmoModelError: when the regression and
            gating files disagree on the attributes, or the regression's width
            is not the backbone's hidden size.
        pipelines.common.armo.backbone.PatternError: when the chat template
            gives no assistant-turn pattern.
    """
    import torch

    from pipelines.common.armo.backbone import assistant_pattern, load_backbone
    from pipelines.common.armo.model import (
        CONFIG_FILE,
        FORMAT,
        GATING_FILE,
        REGRESSION_FILE,
        ArmoModelError,
        load_head,
    )
    from pipelines.common.chat_format import (
        RUN_CONFIG,
        RUN_CONFIG_KEY,
        setup_chat_format,
    )
    from pipelines.common.modeling import load_tokenizer

    cfg = cfg or BuildArmoConfig()
    head = load_head(regression, gating)  # checks the two files agree
    tok = load_tokenizer(backbone, trust_remote_code=cfg.trust_remote_code)
    fmt = setup_chat_format(
        tok, backbone, chat_template=cfg.chat_template, system_prompt=cfg.system_prompt
    )
    pattern = assistant_pattern(tok)
    model = load_backbone(
        backbone,
        dtype=cfg.dtype,
        device=torch.device("cpu"),
        trust_remote_code=cfg.trust_remote_code,
    )
    if head.weight.shape[1] != model.config.hidden_size:
        raise ArmoModelError(
            f"{regression}: weight is {head.weight.shape[1]} wide, the backbone"
            f" {backbone} has hidden size {model.config.hidden_size}"
        )
    config = {
        "format": FORMAT,
        "attributes": list(head.attributes),
        "pattern": pattern,
        "backbone": str(backbone),
        "dtype": cfg.dtype,
        "regression": str(regression),
        "gating": str(gating),
        "chat_format": fmt.record(with_template=False),
        "versions": library_versions(),
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.copyfile(regression, tmp / REGRESSION_FILE)
        shutil.copyfile(gating, tmp / GATING_FILE)
        write_json(tmp / RUN_CONFIG, {RUN_CONFIG_KEY: fmt.record()})
        write_json(tmp / CONFIG_FILE, config)
    logger.info(
        "wrote %s: %d attributes, pattern %s", out, len(head.attributes), pattern
    )
    return config


def make_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.build_armo",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--backbone", required=True, help="folder or hub id")
    parser.add_argument("--regression", type=Path, required=True)
    parser.add_argument("--gating", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the model folder")
    add_dataclass_args(parser, BuildArmoConfig)
    return parser


@handle_user_errors
def main(argv: list[str] | None = None) -> int:
    """Run the CLI."""
    args = make_parser().parse_args(argv)
    setup_logging()
    cfg = dataclass_from_args(BuildArmoConfig, args)
    log_run_header(
        logger,
        cfg,
        backbone=args.backbone,
        regression=str(args.regression),
        gating=str(args.gating),
        out=str(args.out),
    )
    config = build_armo(args.backbone, args.regression, args.gating, args.out, cfg=cfg)
    logger.info("config %s", json.dumps(config, sort_keys=True)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
