"""`snakemake --report` of the tiny study, opened in headless Chromium.

The tiny `all` runs once for this module; its report is loaded in Debian's
chromium over the DevTools protocol (a pipe, so no port and no websocket
client), and read as a person would: the page it opens on, each registered
plot shown as the report shows it (screenshot: present and not blank), each
table. The expected numbers are computed here from the result files.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from .conftest import TINY_CONFIG, run_snakemake

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1366, 768)  # a common laptop screen
PLOTS = {
    "results/report/eval.png",
    "results/report/bon.png",
    "results/report/dogerm.png",
    "results/report/ppo.png",
    "results/report/armo.png",
    "results/report/transfer.png",
    "results/report/active.png",
}
TABLES = {
    "results/report/eval.csv",
    "results/report/bon.csv",
    "results/report/dogerm.csv",
    "results/report/ppo.csv",
    "results/report/ppo_summary.csv",
    "results/report/armo.csv",
    "results/report/transfer.csv",
    "results/report/active.csv",
    "results/report/headline.csv",
    "results/report/config.yaml",
}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--remote-debugging-pipe",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


class Chrome:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, profile: Path, timeout: float = 60.0):
        cmd_read, self._cmd = os.pipe()
        self._resp, resp_write = os.pipe()

        def wire() -> None:  # in the child: commands on fd 3, replies on fd 4
            # via fds >= 10, so that neither pipe end is overwritten first
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_read, resp_write)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(resp_write)
        self.timeout, self._buf, self._id = timeout, b"", 0
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        """Attach to the page target and give it the window's size."""
        pages = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in pages if t["type"] == "page")
        self.session = self.call(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": WINDOW[0],
                "height": WINDOW[1],
                "deviceScaleFactor": 1,
                "mobile": False,
            },
            page=True,
        )

    def call(self, method: str, params: dict | None = None, *, page=False) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if page:
            msg["sessionId"] = self.session
        os.write(self._cmd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._resp], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method}")
            chunk = os.read(self._resp, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk

    def js(self, expression: str):
        """Evaluate in the page (promises awaited); the JSON value."""
        reply = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            page=True,
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(reply["exceptionDetails"])
        return reply["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the report never showed {what}")
            time.sleep(0.1)

    def screenshot(self, clip: dict | None = None) -> Image.Image:
        params = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        data = self.call("Page.captureScreenshot", params, page=True)["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd)
        os.close(self._resp)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny study's `all`, and its report."""
    work = tmp_path_factory.mktemp("report") / "work"
    work.mkdir()
    res = run_snakemake("--cores", "2", "all", workdir=work)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_snakemake("--report", str(work / "report.html"), workdir=work)
    assert res.returncode == 0, res.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def browser(tiny_run, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip(
            "no chromium to load the report in (Debian: apt-get install chromium)"
        )
    chrome = Chrome(tmp_path_factory.mktemp("chromium-profile"))
    try:
        chrome.call("Page.enable", page=True)
        url = (tiny_run / "report.html").as_uri()
        chrome.call("Page.navigate", {"url": url}, page=True)
        chrome.wait_for(
            "typeof app !== 'undefined' && document.querySelector('.prose') !== null",
            "its opening page",
        )
        yield chrome
    finally:
        chrome.close()


def fmt(values) -> str:
    """Mean ± sample SD (numpy, ddof=1) with 3 decimals, or the value alone."""
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def open_category(chrome: Chrome, category: str, shows: str) -> None:
    """Back to the menu, then a category, as a reader clicks (the results list
    is built when it mounts, so it must unmount between two categories)."""
    chrome.js("app.setView({navbarMode: 'menu'}); 1")
    chrome.wait_for(
        "!document.querySelector('#app').innerText.includes('RESULT\\t')", "the menu"
    )
    chrome.js(f"app.showCategory({category!r}); 1")
    chrome.wait_for(f"document.body.innerText.includes({shows!r})", f"{shows!r}")


def page_text(chrome: Chrome) -> str:
    return " ".join(chrome.js("document.querySelector('.prose').innerText").split())


def test_report_opens_on_what_was_run_and_the_headline_numbers(tiny_run, browser):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    text = page_text(browser)
    assert text.startswith("rmflow: the tiny reward-model study")
    assert "What was run" in text and "Preset tiny" in text
    for domain in cfg["data"]["domains"]:
        lines = [
            sum(1 for _ in open(tiny_run / f"results/data/{domain}/{s}.jsonl"))
            for s in ("train", "test")
        ]
        assert f"{domain} {lines[0]} {lines[1]}" in text
    versions = json.loads(
        (tiny_run / "results/models/sft/general/run_config.json").read_text()
    )["versions"]
    assert f"torch {versions['torch']}" in text
    # evaluation: per benchmark, mean ± SD over seeds, from the eval JSONs
    for trainset in cfg["rm"]["trainsets"]:
        for domain in cfg["data"]["domains"]:
            results = [
                json.loads(
                    (
                        tiny_run
                        / f"results/eval/rm-{trainset}-seed{s}/{domain}-test.json"
                    ).read_text()
                )
                for s in cfg["rm"]["seeds"]
            ]
            cells = [fmt([r["accuracy"] for r in results])]
            for group in ("clean", "spurious"):
                split = [r["spurious_split"][group]["accuracy"] for r in results]
                cells.append(fmt(split))
            assert f"{trainset} {domain}-test {' '.join(cells)}" in text
    # the gold-labelled pairs and the gold RM are listed with what was run
    gold = [
        sum(1 for _ in open(tiny_run / f"results/data/gold-labelled/{s}.jsonl"))
        for s in ("train", "test")
    ]
    assert f"gold-labelled {gold[0]} {gold[1]}" in text
    assert "gold results/models/gold" in text
    # best-of-n: gold at the largest n, single RMs pooled over seeds
    top = max(cfg["bon"]["sample_ns"])

    def gold_at_top(name):
        rows = json.loads((tiny_run / f"results/bon/{name}.json").read_text())
        return next(r["gold_score"] for r in rows["results"] if r["n"] == top)

    singles = [gold_at_top(f"seed{s}") for s in cfg["rm"]["seeds"]]
    assert f"({len(singles)} seeds) {top} " in text
    assert fmt(singles) in text
    assert f"ensemble_uwo {top} " in text
    # DogeRM: accuracy of the plain RM (w=0) on each test split
    (lm,) = cfg["merge"]["domains"]
    for domain in cfg["data"]["domains"]:
        plain = json.loads(
            (tiny_run / f"results/eval/merged-{lm}-w0/{domain}-test.json").read_text()
        )["accuracy"]
        assert f"{lm} accuracy {domain}-test {plain:.3f}" in text
    # readable from its title: not cut at the top or left of its pane
    title, pane = browser.js(
        "(() => { const t = document.querySelector('.prose h1');"
        " const p = t.closest('.overflow-auto');"
        " return [t.getBoundingClientRect().toJSON(),"
        " p.getBoundingClientRect().toJSON()]; })()"
    )
    assert title["top"] >= pane["top"] and title["left"] >= pane["left"], (title, pane)


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_every_registered_plot_shows_and_is_not_blank(tiny_run, browser):
    results = browser.js("results")
    on_disk = {
        f"results/report/{p.name}" for p in tiny_run.glob("results/report/*.png")
    }
    assert PLOTS <= on_disk
    assert on_disk <= set(results), "a plot is made but not registered"
    categories = browser.js("categories")
    category_of = {
        p: cat for cat, subs in categories.items() for ps in subs.values() for p in ps
    }
    for path in sorted(on_disk):
        entry = results[path]
        assert entry["mime_type"] == "image/png"
        assert len(" ".join(entry["caption"].split())) > 100, f"{path}: no caption"
        # open its category (the menu then lists it), show it as a click on its
        # row does
        listed_as = (entry["labels"] or {}).get("result", entry["name"])
        open_category(browser, category_of[path], listed_as)
        browser.js(f"new ToggleViewManager(app).handleSelectedResult({path!r}); 1")
        browser.wait_for(
            "(() => { const i = [...document.images].find(x => x.src.startsWith("
            "'data:image/png')); return i && i.complete && i.naturalWidth > 0; })()",
            path,
        )
        img = browser.js(
            "(() => { const i = [...document.images].find(x => x.src.startsWith("
            "'data:image/png')); const r = i.getBoundingClientRect(); return "
            "{w: i.naturalWidth, h: i.naturalHeight, x: r.left, y: r.top, "
            "rw: r.width, rh: r.height, src: i.src}; })()"
        )
        raw = base64.b64decode(img["src"].split("base64,", 1)[1])
        assert raw == (tiny_run / path).read_bytes(), f"{path}: not the file"
        assert (img["w"], img["h"]) == _png_size(tiny_run / path)
        # all of it in the window at natural size: nothing cut off
        assert img["x"] >= 0 and img["y"] >= 0, (path, img["x"], img["y"])
        assert img["x"] + img["rw"] <= WINDOW[0] and img["y"] + img["rh"] <= WINDOW[1]
        shot = browser.screenshot(
            {"x": img["x"], "y": img["y"], "width": img["rw"], "height": img["rh"]}
        )
        pixels = np.asarray(shot).reshape(-1, 3)
        colours = len(np.unique(pixels, axis=0))
        inked = float((pixels.min(axis=1) < 200).mean())  # not near-white
        assert colours > 50 and inked > 0.02, (path, colours, inked)


def test_every_registered_table_is_there_with_a_caption(tiny_run, browser):
    results = browser.js("results")
    categories = browser.js("categories")
    assert TABLES <= set(results)
    listed = {p for cat in categories.values() for sub in cat.values() for p in sub}
    assert PLOTS | TABLES <= listed
    assert sorted(categories) == [
        "1 Summary",
        "2 Evaluation",
        "3 Best-of-n",
        "4 DogeRM",
        "5 PPO",
        "6 ArmoRM",
        "7 Transfer and active learning",
    ]
    for path in sorted(TABLES):
        entry = results[path]
        raw = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        assert raw == (tiny_run / path).read_bytes(), path
        assert len(" ".join(entry["caption"].split())) > 100, f"{path}: no caption"
    # the category page lists each by its label, as a reader finds them
    open_category(browser, "1 Summary", "table: headline numbers")
    assert "config used (YAML)" in browser.js("document.body.innerText")
