"""train_loop's progress lines (issue 11): cadence, the final line, a resume.

A one-weight linear model on 12 points: batch 4, 2 epochs = 6 optimiser
steps, so the expected lines are counted by hand.
"""

import logging
import os
import re
import signal
from dataclasses import dataclass

import pytest
import torch

from pipelines.common.training import Interrupted, make_accelerator, train_loop

LOGGER = "pipelines.common.training"
LINE = re.compile(
    r"^toy: (\d+)/(\d+) steps \((\d+\.\d)%\), (\S+) steps/s, elapsed \S+"
    r"(, ETA \S+)?( \(done\))?$"
)
X = torch.linspace(-1.0, 1.0, 12).reshape(12, 1)
Y = 3.0 * X


@dataclass(frozen=True)
class Cfg:
    learning_rate: float = 0.1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 2
    max_steps: int = 0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    log_every: int = 1
    checkpoint_every: int = 0


def loss_fn(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).sum(), {}


def run(progress_every, *, make_batch=None, checkpoint_dir=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)

    def batches(idx):
        return {"x": X[idx], "y": Y[idx]}, len(idx)

    return train_loop(
        accelerator=make_accelerator("cpu"),
        model=model,
        n_examples=12,
        make_batch=make_batch or batches,
        loss_fn=loss_fn,
        cfg=Cfg(),
        seed=0,
        checkpoint_dir=checkpoint_dir,
        fingerprint="toy",
        name="toy",
        progress_every=progress_every,
    )


def progress_lines(caplog):
    """(done, total, share %, rate, has ETA, final) of each progress line."""
    out = []
    for record in caplog.records:
        m = LINE.match(record.getMessage())
        if m:
            done, total, share, rate, eta, final = m.groups()
            row = (int(done), int(total), float(share), float(rate), eta is not None)
            out.append((*row, final == " (done)"))
    return out


def test_every_step_with_zero_cadence_then_the_final_line(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _, result = run(0.0)
    lines = progress_lines(caplog)
    assert result.steps == 6
    # one line per step (cadence 0), then the final one
    assert [(d, t, final) for d, t, *_, final in lines] == [
        *((k, 6, False) for k in range(1, 7)),
        (6, 6, True),
    ]
    shares = [16.7, 33.3, 50.0, 66.7, 83.3, 100.0, 100.0]
    assert [share for _, _, share, *_ in lines] == shares
    assert all(rate > 0 for _, _, _, rate, _, _ in lines)
    assert [has_eta for *_, has_eta, _ in lines] == [True] * 5 + [False, False]


def test_long_cadence_logs_only_the_final_line_with_a_rate(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(3600.0)
    lines = progress_lines(caplog)
    assert len(lines) == 1
    done, total, _, rate, _, final = lines[0]
    assert (done, total, final) == (6, 6, True) and rate > 0


def test_resumed_run_counts_the_steps_it_did_not_redo(caplog, tmp_path):
    calls = []

    def sigterm_on_fourth(idx):
        calls.append(idx)
        if len(calls) == 4:  # step 4 still finishes, then the loop stops
            os.kill(os.getpid(), signal.SIGTERM)
        return {"x": X[idx], "y": Y[idx]}, len(idx)

    ckpt = tmp_path / "ckpt"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with pytest.raises(Interrupted, match="after step 4/6"):
            run(0.0, make_batch=sigterm_on_fourth, checkpoint_dir=ckpt)
    first = progress_lines(caplog)
    assert [(d, final) for d, *_, final in first] == [(k, False) for k in (1, 2, 3, 4)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _, result = run(0.0, checkpoint_dir=ckpt)
    assert result.resumed_from_step == 4
    second = progress_lines(caplog)
    # steps 1-4 count as done: the first line is 5/6, not 1/6
    assert [(d, t, share, final) for d, t, share, *_, final in second] == [
        (5, 6, 83.3, False),
        (6, 6, 100.0, False),
        (6, 6, 100.0, True),
    ]
