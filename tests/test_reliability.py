"""Failure behaviour of the tools: bad inputs caught before work, one-line errors without a
traceback, interrupts that leave nothing half-written, sources never touched, a work directory
held by one process at a time."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ncjax import files
from ncjax.lock import WorkdirLock, WorkdirLockedError

REPO = Path(__file__).resolve().parents[1]
LINES = (REPO / "tests" / "fixtures" / "gender_lines.txt").read_text().splitlines()


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


_SCRIPTS = {}


def _script(name):
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"launch_{name[:-3]}", REPO / "launch" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


@pytest.fixture()
def run(capsys):
    """Runs a launch script's main() in this process; returns its exit code and stderr."""

    def call(script, *args):
        code = _script(script).main([str(a) for a in args])
        return _Result(code, capsys.readouterr().err)

    return call


def _one_line_error(proc, code, *needles):
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, last
    return last


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


# ----------------------------------------------------------------------------- measure_collapse


@pytest.mark.parametrize("option, value, needle", [
    ("--min-count", "0", "--min-count 0 must be at least 1"),
    ("--max-tokens", "0", "--max-tokens 0 must be at least 1"),
    ("--max-length", "2", "--max-length 2 must be at least 3"),
    ("--batch-size", "-4", "--batch-size -4 must be at least 1"),
])
def test_measure_rejects_out_of_range_options(run, tiny_bert_dir, corpus, tmp_path, option, value, needle):
    out = tmp_path / "nc.json"
    proc = run("measure_collapse.py", "--model", tiny_bert_dir, "--corpus", corpus, "--classes", "all",
                "--output", out, option, value)
    _one_line_error(proc, 2, needle)
    assert not out.exists()


def test_measure_checks_outputs_before_loading(run, tiny_bert_dir, corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["--output", blocker / "nc.json"], "is not a directory"),
        (["--output", tmp_path], "is a directory"),
        (["--output", tmp_path / "a.json", "--plot", tmp_path / "a.json"], "name the same file"),
        (["--output", tmp_path / "b.json", "--plot", blocker / "p.png"], "--plot"),
    ]
    for extra, needle in cases:
        # a missing model would fail later: the output check must come first
        proc = run("measure_collapse.py", "--model", tmp_path / "no-such-model", "--corpus", corpus, *extra)
        _one_line_error(proc, 2, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "file"]


def test_measure_interrupt_leaves_no_output(tiny_bert_dir, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(LINES * 3000) + "\n")
    out = tmp_path / "nc.json"
    proc = subprocess.Popen([sys.executable, str(REPO / "launch" / "measure_collapse.py"), "--model", str(tiny_bert_dir),
                             "--corpus", str(big), "--classes", "all", "--output", str(out), "--batch-size", "8"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seen = ""
    try:
        while "collapse pass" not in seen:  # the progress bar: the measurement is under way
            chunk = proc.stderr.read(1)
            assert chunk, f"exited before measuring: {seen[-2000:]}"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = seen + rest
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted; no result file was written"
    assert list(tmp_path.iterdir()) == [big]


def test_measure_batch_not_divisible_names_the_option(run, tiny_bert_dir, corpus, tmp_path):
    proc = run("measure_collapse.py", "--model", tiny_bert_dir, "--corpus", corpus, "--classes", "all",
                "--output", tmp_path / "nc.json", "--batch-size", "4")
    _one_line_error(proc, 2, "batch size 4 is not divisible by the 8 devices")


def test_measure_writes_strict_json(run, tiny_bert_dir, corpus, tmp_path):
    out = tmp_path / "nc.json"
    proc = run("measure_collapse.py", "--model", tiny_bert_dir, "--corpus", corpus, "--classes", "all",
                "--output", out, "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ----------------------------------------------------------------------------- convert


def test_convert_refuses_dst_inside_or_equal_to_src(run, tiny_bert_dir, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_bert_dir, src)
    before = sorted(p.name for p in src.iterdir())
    for dst in (src, src / "sub", tmp_path, src / "model.safetensors"):
        proc = run("convert.py", src, dst, "--overwrite")
        _one_line_error(proc, 2, "SRC", "separate directory")
    proc = run("convert.py", src / "model.safetensors", src, "--overwrite")
    _one_line_error(proc, 2, "separate directory")
    assert sorted(p.name for p in src.iterdir()) == before


def test_convert_to_existing_file_is_refused(run, tiny_bert_dir, tmp_path):
    target = tmp_path / "out"
    target.write_text("not a directory")
    proc = run("convert.py", tiny_bert_dir, target)
    _one_line_error(proc, 2, "not a directory")
    assert target.read_text() == "not a directory"


# ----------------------------------------------------------------------------- files


def test_write_json_is_strict_atomic_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    files.write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": None}}

    class Boom:
        pass

    with pytest.raises(TypeError):
        files.write_json(path, {"x": Boom()})
    assert json.loads(path.read_text())["a"] is None  # the old file survives
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_check_writable_messages(tmp_path):
    assert files.check_writable(tmp_path / "new" / "deeper" / "x.json", "--output") == tmp_path / "new" / "deeper" / "x.json"
    with pytest.raises(ValueError, match="--output .* is a directory"):
        files.check_writable(tmp_path, "--output")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        files.check_writable(tmp_path / "f" / "x.json", "--output")


# ----------------------------------------------------------------------------- lock

_HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from ncjax.lock import WorkdirLock
with WorkdirLock(sys.argv[1], what="training run"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_second_process_fails_fast_and_dead_holder_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(repo=str(REPO)), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError, match=rf"in use by another training run \(PID {holder.pid} on "):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the record stays in the file
        holder.wait()
    assert str(holder.pid) in (tmp_path / ".lock").read_text()
    with caplog.at_level("WARNING"), WorkdirLock(tmp_path, what="grid"):
        record = json.loads((tmp_path / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["what"] == "grid"
    assert f"left by PID {holder.pid}" in caplog.text
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly: nothing to take over next time
    with WorkdirLock(tmp_path):
        pass


def test_two_training_runs_on_one_workdir(tmp_path):
    """The second run exits at once naming the holder; the first finishes normally."""
    workdir = tmp_path / "run"
    args = [sys.executable, str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs" / "bert_nc3.py:tiny"),
            "--workdir", str(workdir), "--config.train.num_steps=6", "--config.checkpoint.every_steps=3",
            "--config.data.path=tests/fixtures/gender_lines.txt", "--config.log.tensorboard=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = workdir / ".lock"
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text().strip()):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # paused while holding the directory: no race with its end
        try:
            second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        finally:
            first.send_signal(signal.SIGCONT)
        _one_line_error(second, 1, f"in use by another training run (PID {first.pid}")
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert (workdir / "export" / "hf" / "model.safetensors").is_file()
    assert lock.read_text() == ""
