import logging

from pipelines.common.progress import Progress, format_seconds


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_format_seconds_by_hand():
    assert format_seconds(4.2) == "4s"
    assert format_seconds(75.2) == "1m15s"
    assert format_seconds(3725) == "1h02m05s"
    assert format_seconds(-3) == "0s"


def test_lines_at_cadence_with_rate_and_eta(caplog):
    clock = Clock()
    log = logging.getLogger("test.progress")
    p = Progress("train_rm", 400, unit="steps", logger=log, every_s=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(10):  # 10 steps in 5 s: under the cadence, no line yet
            clock.t += 0.5
            p.update()
        assert caplog.records == []
        for _ in range(110):  # 120 steps in all, 0.5 s each: t = 160
            clock.t += 0.5
            p.update()
        lines = [r.getMessage() for r in caplog.records]
    # lines at t=130 (step 60) and t=160 (step 120); rate 2 steps/s
    assert lines == [
        "train_rm: 60/400 steps (15.0%), 2 steps/s, elapsed 30s, ETA 2m50s",
        "train_rm: 120/400 steps (30.0%), 2 steps/s, elapsed 1m00s, ETA 2m20s",
    ]


def test_resumed_run_rate_excludes_done_units_and_finish_always_logs(caplog):
    clock = Clock()
    log = logging.getLogger("test.progress2")
    p = Progress("gen", 100, unit="seqs", logger=log, done=50, clock=clock)
    clock.t += 10
    p.update(20)  # 20 new in 10 s -> 2/s, 30 left -> 15 s
    with caplog.at_level(logging.INFO, logger="test.progress2"):
        p.finish()
    assert caplog.records[-1].getMessage() == (
        "gen: 70/100 seqs (70.0%), 2 seqs/s, elapsed 10s, ETA 15s (done)"
    )
    unknown = Progress("score", None, unit="seqs", logger=log, clock=clock)
    clock.t += 4
    unknown.update(8)
    assert unknown.line() == "score: 8 seqs, 2 seqs/s, elapsed 4s"
