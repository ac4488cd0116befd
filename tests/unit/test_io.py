import json
import os
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from pipelines.common import io
from pipelines.common.io import (
    InputFileError,
    atomic_dir,
    atomic_open,
    atomic_path,
    read_jsonl,
    remove_stale_temps,
    write_json,
    write_jsonl,
    write_jsonl_all,
)

from ..conftest import ROOT


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


# ---------------------------------------------------------------- permissions


def test_files_get_the_umask_mode(tmp_path, umask):
    want = 0o666 & ~umask  # what open() / touch give a new file
    with atomic_path(tmp_path / "a.bin") as tmp:
        assert mode(tmp) == want  # already while written
        tmp.write_bytes(b"x")
    with atomic_open(tmp_path / "b.txt") as fh:
        fh.write("x")
    write_jsonl(tmp_path / "c.jsonl", [{"a": 1}])
    write_json(tmp_path / "d.json", {"a": 1})
    for name in ("a.bin", "b.txt", "c.jsonl", "d.json"):
        assert mode(tmp_path / name) == want, name
    (tmp_path / "ref").touch()  # the same rule, measured independently
    assert mode(tmp_path / "ref") == want


def test_folders_get_the_umask_mode(tmp_path, umask):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "w.txt").write_text("x")
    assert mode(out) == 0o777 & ~umask
    (tmp_path / "ref").mkdir()
    assert mode(tmp_path / "ref") == mode(out)
    with atomic_dir(out) as tmp:  # replacing an existing output: same mode
        (tmp / "w.txt").write_text("y")
    assert mode(out) == 0o777 & ~umask and (out / "w.txt").read_text() == "y"


# ----------------------------------------------------- killed writers' leftovers


def start_writer(tmp_path, body):
    """A real writer process that stops mid-write and waits to be killed."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pipelines.common.io import atomic_dir, atomic_open\n"
        + textwrap.dedent(body)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline().strip() == "writing"
    return proc


def kill(proc):
    proc.kill()  # SIGKILL: no cleanup handler runs
    proc.wait(timeout=60)
    assert proc.returncode == -9


def test_sigkilled_file_writer_leaves_a_temp_the_next_run_removes(tmp_path):
    out = tmp_path / "res" / "a.json"
    proc = start_writer(
        tmp_path,
        f"""
        with atomic_open(Path({str(out)!r})) as fh:
            fh.write('{{"half": ')
            fh.flush()
            print("writing", flush=True)
            time.sleep(600)
        """,
    )
    kill(proc)
    (left,) = out.parent.glob(".a.json.*.tmp")
    assert left.read_text() == '{"half": ' and not out.exists()
    write_json(out, {"whole": True})
    assert json.loads(out.read_text()) == {"whole": True}
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.json"]


def test_sigkilled_folder_writer_leaves_a_temp_the_next_run_removes(tmp_path):
    out = tmp_path / "models" / "rm"
    proc = start_writer(
        tmp_path,
        f"""
        with atomic_dir(Path({str(out)!r})) as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(600)
        """,
    )
    kill(proc)
    (left,) = out.parent.glob(".rm.tmp-*")
    assert (left / "model.safetensors").exists()
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    assert (out / "model.safetensors").read_bytes() == b"whole"
    assert sorted(p.name for p in out.parent.iterdir()) == ["rm"]


def test_kill_between_the_renames_of_atomic_dir_keeps_the_previous(tmp_path):
    out = tmp_path / "models" / "rm"
    with atomic_dir(out) as tmp:
        (tmp / "v").write_text("1")
    # The writer dies right after moving the previous output aside.
    proc = start_writer(
        tmp_path,
        f"""
        import os, signal
        from pipelines.common import io
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            print("writing", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        io.os.replace = replace
        with atomic_dir(Path({str(out)!r})) as tmp:
            (tmp / "v").write_text("2")
        """,
    )
    proc.wait(timeout=60)
    assert proc.returncode == -9 and not out.exists()
    (old,) = out.parent.glob(".rm.old-*")
    assert (old / "previous" / "v").read_text() == "1"
    removed = remove_stale_temps(out)  # what the next writer does first
    assert (out / "v").read_text() == "1"  # the previous output is back
    assert sorted(p.name for p in out.parent.iterdir()) == ["rm"]
    assert len(removed) == 2  # the .old- holder and the new .tmp- folder


def test_stale_pattern_claims_only_this_outputs_temps(tmp_path):
    names = {
        # temporaries of a.json: this process's format and tempfile.mkstemp's
        ".a.json.0123abcd-999999-0badf00d.tmp": True,
        ".a.json.k2j3_x9q.tmp": True,
        ".a.json.tmp-k2j3_x9q": True,
        ".a.json.old-k2j3_x9q": True,
        # other outputs' temporaries, or not temporaries at all
        ".a.jsonl.k2j3_x9q.tmp": False,
        ".a.json.gz.k2j3_x9q.tmp": False,
        ".b.a.json.k2j3_x9q.tmp": False,
        ".a.json.tmp": False,
        "a.json.k2j3_x9q.tmp": False,
        ".a.json.k2j3_x9q.tmp.keep": False,
        ".a.json.run-k2j3_x9q": False,  # eval_rewardbench's own scratch folder
        ".a.json.tmp-k2j3.x9q": False,
    }
    for name in names:
        if "tmp-" in name or "old-" in name or "run-" in name:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text("x")
    write_json(tmp_path / "a.json", {})
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, stale in names.items() if not stale} | {"a.json"}


def test_live_temp_of_another_thread_is_spared(tmp_path, monkeypatch):
    out = tmp_path / "a.jsonl"
    monkeypatch.chdir(tmp_path)
    inside, release = threading.Event(), threading.Event()
    errors = []

    def slow_writer():
        try:
            with atomic_open(out) as fh:
                fh.write('{"from": "thread"}\n')
                inside.set()
                assert release.wait(60)
        except BaseException as err:  # reported below
            errors.append(err)

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert inside.wait(60)
    (live,) = tmp_path.glob(".a.jsonl.*.tmp")
    # the same output spelt relative: cleans stale temps of a.jsonl first
    write_jsonl("a.jsonl", [{"from": "main"}])
    assert live.exists()
    release.set()
    thread.join(60)
    assert not errors
    assert read_jsonl(out) == [{"from": "thread"}]  # the last rename wins
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


def test_live_temp_of_another_process_is_spared(tmp_path):
    out = tmp_path / "a.json"
    proc = start_writer(
        tmp_path,
        f"""
        with atomic_open(Path({str(out)!r})) as fh:
            print("writing", flush=True)
            time.sleep(600)
        """,
    )
    try:
        (live,) = tmp_path.glob(".a.json.*.tmp")
        write_json(out, {"a": 1})
        assert live.exists()
    finally:
        kill(proc)
    write_json(out, {"a": 2})  # its writer is dead now
    assert not live.exists()


def test_temps_of_other_hosts_are_stale(tmp_path, monkeypatch):
    # On a shared cluster file system a killed job's temp carries another
    # node's tag; a pid alive here says nothing about it.
    other = tmp_path / f".a.json.ffffffff-{os.getpid()}-0badf00d.tmp"
    other.write_text("x")
    monkeypatch.setattr(io, "_HOST", "00000000")
    write_json(tmp_path / "a.json", {})
    assert not other.exists()


# --------------------------------------------------------------- group writes


def test_write_jsonl_all_writes_all_or_none(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("old a\n")
    with pytest.raises(TypeError):
        write_jsonl_all({a: [{"x": 1}], b: [{"x": 2}, {"bad": {1, 2}}]})
    assert a.read_text() == "old a\n" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]
    counts = write_jsonl_all({a: [{"x": 1}], b: [{"x": 2}, {"x": 3}]})
    assert counts == {a: 1, b: 2}
    assert read_jsonl(b) == [{"x": 2}, {"x": 3}]


# ------------------------------------------------------------------- reading


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(InputFileError) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}: line 3: <json>: malformed JSON")
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n{"a": 2}\r\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
