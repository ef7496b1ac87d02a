"""Training runs end to end on the tiny fixture (configs/bert_nc3.py:tiny).

One uninterrupted 8-device run is the reference; the other runs are compared with it: a 1-device
run (same losses within float32 reduction-order tolerance), a run SIGKILLed after a checkpoint and
rerun (bit-identical parameters), a SIGTERMed run (checkpoint, exit 0), and a two-process run
over 127.0.0.1 with CPU collectives (same losses as one process with the same global batch).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from ncjax import logs
from ncjax.checkpoint import Checkpointer
from conftest import load_module

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 4
# Reduction order differs between 1 and 8 devices (float32 all-reduce vs one local sum); after
# 12 AdamW steps the per-step losses agree to this relative tolerance.
LOSS_RTOL = 2e-4


def _load_config(variant):
    return load_module(REPO / "configs" / "bert_nc3.py", "bert_nc3").get_config(variant)


def _write_corpus(path: Path, n: int = 96, seed: int = 0) -> None:
    """Sentences made of the tiny fixture's vocabulary (so tokens are real words, not [UNK])."""
    rng = np.random.default_rng(seed)
    subjects = ["he", "she", "the man", "the woman", "the king", "the queen", "his father", "her mother",
                "the boy", "the girl", "the men", "the women"]
    predicates = ["worked at the hospital", "was a nurse", "was a doctor", "was an engineer", "was happy",
                  "was sad", "was good", "was bad", "and her mother worked", "was not at the hospital",
                  "worked with him", "ran to the king"]
    rows = [f"{rng.choice(subjects).capitalize()} {rng.choice(predicates)}. "
            f"{rng.choice(subjects).capitalize()} {rng.choice(predicates)}." for _ in range(n // 2)]
    path.write_text("Text\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.tsv"
    _write_corpus(path)
    return path


@pytest.fixture(scope="module")
def base_config(corpus, tiny_bert_dir):
    c = _load_config("tiny")
    c.model.path = str(tiny_bert_dir)
    c.data.path = str(corpus)
    c.data.cache_dir = str(corpus.parent / "cache")  # tokenise once for every run here
    c.train.num_steps = STEPS
    c.checkpoint.every_steps = EVERY
    c.log.progress = "off"
    c.log.peak_tflops = 1e-3  # a CPU has no table entry: a given peak turns the mfu metric on
    return c


def _copy(config, **overrides):
    c = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _run(config, workdir):
    from ncjax.train import train_and_evaluate

    return train_and_evaluate(config, workdir)


def _state(workdir: Path):
    """The raw arrays of the latest checkpoint, as numpy (restored without a target)."""
    with Checkpointer(workdir / "checkpoints") as ck:
        step = ck.latest_step()
        import orbax.checkpoint as ocp

        restored = ck._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, jax.tree.map(np.asarray, restored["state"])


def _losses(workdir: Path, key="loss/mlm"):
    return [(r["step"], r[key]) for r in logs.read_metrics(workdir / "metrics.jsonl")]


_SUBPROCESS_PRELUDE = f"""
import json, os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
import ml_collections
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
workdir = sys.argv[2]
"""


_STARTED: list = []


def _subprocess(code: str, config, workdir, env=None) -> subprocess.Popen:
    script = _SUBPROCESS_PRELUDE + code
    log_path = Path(str(workdir) + f".{len(_STARTED)}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:  # a file, not a pipe: a chatty child can never block on it
        proc = subprocess.Popen([sys.executable, "-c", script, config.to_json(), str(workdir)],
                                stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})}, cwd=REPO)
    proc.log_path = log_path
    _STARTED.append(proc)
    return proc


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Waits for the process and returns its output."""
    proc.wait(timeout=timeout)
    return proc.log_path.read_text()


@pytest.fixture(autouse=True)
def _reap_subprocesses():
    """A failed or timed-out test leaves no training process behind (SIGKILL: multi-process JAX
    catches SIGTERM)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- the reference run


@pytest.fixture(scope="module")
def reference(base_config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = _run(base_config, workdir)
    return workdir, result


def test_end_to_end_outputs(reference, tiny_bert_dir):
    workdir, result = reference
    assert result["status"] == "completed" and result["step"] == STEPS
    records = logs.read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("loss", "loss/mlm", "loss/nc3", "nc3_valid", "grad_norm", "lr", "tokens_per_s"):
        assert key in records[-1], key
    # mfu = model FLOPs of a step (global batch 8 x 32) x steps/s (one step a logging window)
    # over the peak of the 8 devices (1e-3 TFLOP/s each)
    from ncjax import flops, masking
    from ncjax.model import BertConfig

    step_flops = flops.train_step_flops(BertConfig.from_json(tiny_bert_dir / "config.json"), 8, 32,
                                        masking.default_max_predictions(32, 0.15))
    assert "mfu" not in records[0]  # the first step's window holds the compilation: no rate
    for r in records[1:]:
        np.testing.assert_allclose(r["mfu"], step_flops * r["tokens_per_s"] / r["tokens"] / (1e9 * 8), rtol=1e-6)
    mlm = [r["loss/mlm"] for r in records]
    assert np.mean(mlm[-4:]) < np.mean(mlm[:4]) - 0.1, mlm
    assert all(np.isfinite(r["loss"]) for r in records)
    # linear decay without warm-up, as transformers' get_linear_schedule_with_warmup(0, N)
    np.testing.assert_allclose([r["lr"] for r in records], [5e-3 * (1 - s / STEPS) for s in range(STEPS)], rtol=1e-6)
    # the loss is MLM + alpha * NC3 (alpha 1 in :tiny) and the penalty is active
    np.testing.assert_allclose([r["loss"] for r in records], [r["loss/mlm"] + r["loss/nc3"] for r in records], rtol=1e-5)
    assert records[-1]["nc3_valid"] and records[-1]["loss/nc3"] > 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == STEPS and config["penalty"]["mode"] == "reference"
    with Checkpointer(workdir / "checkpoints") as ck:
        assert ck.all_steps() == [8, 12]  # max_to_keep 2
        meta = ck.read_meta(12)
    assert meta["sampler_position"] == STEPS and meta["num_devices"] == 8 and not meta["preempted"]
    export = workdir / "export" / "hf"
    assert (export / "model.safetensors").is_file() and (export / "config.json").is_file()
    assert (export / "vocab.txt").is_file()


@pytest.mark.torch
def test_export_loads_in_transformers(reference):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from ncjax.convert import load_model

    export = reference[0] / "export" / "hf"
    model, info = AutoModelForMaskedLM.from_pretrained(str(export), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(str(export))
    enc = tok(["the man was a nurse .", "she worked at the hospital"], padding=True, return_tensors="pt")
    assert (enc["input_ids"] != tok.unk_token_id).all()
    with torch.no_grad():
        ref = model.eval()(**enc).logits.numpy()
    ours, _ = load_model(export)
    out = ours(enc["input_ids"].numpy(), enc["attention_mask"].numpy())
    np.testing.assert_allclose(np.asarray(out.logits), ref, atol=1e-4, rtol=1e-4)
    # the export holds the trained parameters, not the initial ones
    _, state = _state(reference[0])
    np.testing.assert_array_equal(np.asarray(ours.word_embeddings()),
                                  state["params"]["embeddings"]["word"]["embedding"])


def test_one_device_matches_eight(base_config, reference, tmp_path):
    workdir = tmp_path / "one"
    _run(_copy(base_config, **{"parallel.num_devices": 1}), workdir)
    ref, one = _losses(reference[0], "loss"), _losses(workdir, "loss")
    assert [s for s, _ in ref] == [s for s, _ in one]
    np.testing.assert_allclose([v for _, v in one], [v for _, v in ref], rtol=LOSS_RTOL)
    _, a = _state(reference[0])
    _, b = _state(workdir)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(x, y, atol=1e-4)

    # A checkpoint written on 8 devices resumes on 1 (restored through the 1-device shardings).
    moved = tmp_path / "moved"
    shutil.copytree(reference[0] / "checkpoints" / "8", moved / "checkpoints" / "8")
    _run(_copy(base_config, **{"parallel.num_devices": 1}), moved)
    resumed = _losses(moved, "loss")
    assert [s for s, _ in resumed] == list(range(9, STEPS + 1))
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in ref][8:], rtol=LOSS_RTOL)


def kill_after_checkpoint_then_rerun(config, workdir: Path, reference_dir: Path, every: int) -> None:
    """Runs `config` in a subprocess that SIGKILLs itself two steps after the step-`every`
    checkpoint, reruns it in this process, and asserts that the log and every array of the final
    state (parameters, optimiser state, loss-term state) equal the uninterrupted run's."""
    code = f"""
import ncjax.logs as logs
from ncjax.train import train_and_evaluate
write = logs.MetricWriter.write
def write_then_die(self, step, metrics):
    write(self, step, metrics)
    if step == {every + 2}:
        done = Path(workdir) / "checkpoints" / "{every}"
        t = time.time()
        while not done.is_dir() and time.time() - t < 60:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
logs.MetricWriter.write = write_then_die
train_and_evaluate(config, workdir)
"""
    proc = _subprocess(code, config, workdir)
    out = _finish(proc, 240)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    with Checkpointer(workdir / "checkpoints") as ck:
        assert ck.latest_step() == every
    assert max(s for s, _ in _losses(workdir)) >= every + 1

    result = _run(config, workdir)
    assert result["status"] == "completed"
    # the log describes one trajectory, identical to the uninterrupted run's
    assert _losses(workdir) == _losses(reference_dir)
    _, a = _state(reference_dir)
    _, b = _state(workdir)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_sigkill_then_rerun_is_bit_identical(base_config, reference, tmp_path):
    """Killed (SIGKILL) two steps after the step-4 checkpoint; the rerun resumes from step 4."""
    kill_after_checkpoint_then_rerun(base_config, tmp_path / "killed", reference[0], EVERY)
    assert "nc3" in _state(reference[0])[1]["terms"]  # the NC3 statistics were part of the comparison


SLOW_STEPS = """
import ncjax.data as data
gather = data.gather_batch
def slow_gather(*args, **kwargs):  # keeps the run going long enough to be signalled mid-way
    time.sleep(0.25)
    return gather(*args, **kwargs)
data.gather_batch = slow_gather
"""


def signal_after_steps(proc: subprocess.Popen, workdir: Path, steps: int, signum: int) -> str:
    """Sends `signum` to a training subprocess once it has logged `steps` steps; returns its output."""
    metrics = workdir / "metrics.jsonl"
    t = time.time()
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None and time.time() - t < 240, proc.log_path.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signum)
    return _finish(proc, 120)


def test_sigterm_saves_and_exits_zero(base_config, tmp_path):
    workdir = tmp_path / "term"
    code = SLOW_STEPS + """
from ncjax.train import train_and_evaluate
result = train_and_evaluate(config, workdir)
print("RESULT", json.dumps(result))
sys.exit(0 if result["status"] in ("completed", "preempted") else 3)
"""
    proc = _subprocess(code, base_config, workdir)
    out = signal_after_steps(proc, workdir, 3, signal.SIGTERM)
    assert proc.returncode == 0, out[-3000:]
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert result["status"] == "preempted" and 3 <= result["step"] < STEPS
    with Checkpointer(workdir / "checkpoints") as ck:
        assert ck.latest_step() == result["step"]
        assert ck.read_meta(result["step"])["preempted"]
    assert not (workdir / "export").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(base_config, reference, tmp_path):
    """Two processes x 2 CPU devices (gloo collectives) give the losses of one process x 8
    devices: the same global batch, masks and dropout, fed as two process-local halves."""
    workdir = tmp_path / "multi"
    port = _free_port()
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    code = """
import jax
from ncjax.train import train_and_evaluate
result = train_and_evaluate(config, workdir)
print("RESULT", jax.process_index(), jax.process_count(), len(jax.devices()), json.dumps(result))
"""
    procs = []
    for pid in range(2):
        c = _copy(base_config, **{"parallel.distributed": "on", "parallel.coordinator_address": f"127.0.0.1:{port}",
                                  "parallel.num_processes": 2, "parallel.process_id": pid})
        procs.append(_subprocess(code, c, workdir, env=env))
    outs = [_finish(p, 300) for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    for pid, out in enumerate(outs):
        line = out.split("RESULT ", 1)[1].splitlines()[0]
        assert line.startswith(f"{pid} 2 4 "), line
        assert json.loads(line.split(" ", 3)[3])["status"] == "completed"
    with Checkpointer(workdir / "checkpoints") as ck:
        assert ck.all_steps() == [8, 12]
        assert ck.read_meta(12)["num_processes"] == 2
    multi, ref = _losses(workdir, "loss"), _losses(reference[0], "loss")
    assert [s for s, _ in multi] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([v for _, v in multi], [v for _, v in ref], rtol=LOSS_RTOL)
    assert (workdir / "export" / "hf" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- bad inputs


def _fails_before_compute(config, workdir, exc, pattern):
    t = time.perf_counter()
    with pytest.raises(exc, match=pattern) as info:
        _run(config, workdir)
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), message
    assert not (workdir / "checkpoints").exists()
    return time.perf_counter() - t


def test_bad_inputs_fail_in_one_sentence(base_config, tmp_path, tiny_bert_dir):
    _fails_before_compute(_copy(base_config, **{"data.path": str(tmp_path / "nope.tsv")}), tmp_path / "w1",
                          FileNotFoundError, r"data.path .*nope.tsv does not exist")
    empty = tmp_path / "empty.tsv"
    empty.write_text("Text\n\n")
    _fails_before_compute(_copy(base_config, **{"data.path": str(empty)}), tmp_path / "w2",
                          ValueError, r"yields no text")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "vocab.txt"):
        (no_weights / name).write_bytes((tiny_bert_dir / name).read_bytes())
    _fails_before_compute(_copy(base_config, **{"model.path": str(no_weights)}), tmp_path / "w3",
                          FileNotFoundError, r"model.path: .*no_weights has no weight file")
    _fails_before_compute(_copy(base_config, **{"train.batch_size": 12}), tmp_path / "w4",
                          ValueError, r"train.batch_size 12 is not divisible by the 8 devices")
    _fails_before_compute(_copy(base_config, **{"penalty.mode": "batchh"}), tmp_path / "w5",
                          ValueError, r"penalty.mode='batchh' is not one of 'reference', 'batch'")


def test_launch_rejects_unknown_config_key_with_suggestion(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch/train.py", "--config", "configs/bert_nc3.py:tiny", "--workdir", str(tmp_path / "w"),
         "--config.penalty.alhpa=3"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown config field --config.penalty.alhpa; did you mean --config.penalty.alpha?" in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()


def test_non_finite_loss_stops_naming_step_and_checkpoint(base_config, tiny_bert_dir, tmp_path):
    """Weights that overflow (embedding LayerNorm scale 1e38) give a NaN loss at step 1."""
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.txt"):
        (broken / name).write_bytes((tiny_bert_dir / name).read_bytes())
    tensors = load_file(str(tiny_bert_dir / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("embeddings.LayerNorm.weight"))
    tensors[key] = tensors[key] * np.float32(1e38)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FloatingPointError, match=r"^the loss became nan at step 1; training stopped and no "
                                                 r"checkpoint was written yet\.$"):
        _run(_copy(base_config, **{"model.path": str(broken)}), tmp_path / "nan")
    assert not (tmp_path / "nan" / "export").exists()

    # With a checkpoint on disk, the message names it.
    from ncjax.train import check_finite

    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(8, {"x": jax.numpy.zeros(3)}, {"step": 8})
        check_finite(9, {"loss": 1.5, "loss/mlm": 1.5}, ck)
        with pytest.raises(FloatingPointError, match=r"^the loss became inf at step 9; training stopped and the last "
                                                     r"good checkpoint is .*ck/8 \(step 8\)\.$"):
            check_finite(9, {"loss": float("inf"), "loss/mlm": 2.0}, ck)


# ----------------------------------------------------------------------------- penalty wiring


def _fake_output(rng, b, length, p, h):
    from ncjax.model import MaskedLMOutput

    last = rng.normal(size=(b, length, h)).astype(np.float32)
    return MaskedLMOutput(None, jax.numpy.asarray(last), None), last


@pytest.mark.parametrize("positions,features,labels,shift", [
    ("all", "last_hidden", "input", 1),      # reference (released code)
    ("all", "mlm_transform", "original", 0),  # :batch
    ("masked", "mlm_transform", "original", 0),
    ("masked", "last_hidden", "input", 0),
])
def test_penalty_inputs_select_features_and_classes(positions, features, labels, shift):
    """What the NC3 statistics read, against numpy gathers of the same arrays."""
    from ncjax.terms.nc3 import PenaltySpec, penalty_inputs

    rng = np.random.default_rng(0)
    b, length, p, h = 3, 6, 2, 4
    ids = rng.integers(5, 50, size=(b, length)).astype(np.int32)
    att = np.ones((b, length), np.int32)
    att[0, 4:] = 0
    masked_ids = ids.copy()
    masked_ids[:, 1] = 4
    pos = np.array([[1, 2], [1, 3], [1, 0]], np.int32)
    w = np.array([[1, 1], [1, 1], [1, 0]], np.float32)
    masks = {"input_ids": jax.numpy.asarray(masked_ids), "positions": jax.numpy.asarray(pos),
             "labels": jax.numpy.asarray(np.take_along_axis(ids, pos, 1)), "weights": jax.numpy.asarray(w)}
    out, last = _fake_output(rng, b, length, p, h)
    transform = np.tanh  # stands in for the MLM transform

    class Model:
        def mlm_transform(self, x):
            return jax.numpy.tanh(x)

    if positions == "masked":
        out = out._replace(mlm_hidden=jax.numpy.asarray(transform(np.take_along_axis(last, pos[..., None], 1))))
    spec = PenaltySpec(mode="batch", positions=positions, features=features, labels=labels, label_shift=shift)
    feats, lab, wts = (np.asarray(x) for x in penalty_inputs(Model(), out, {"input_ids": ids, "attention_mask": att},
                                                                 masks, spec))
    source = masked_ids if labels == "input" else ids
    if positions == "all":
        want = last if features == "last_hidden" else transform(last)
        np.testing.assert_allclose(feats, want, rtol=1e-6)
        if shift:
            np.testing.assert_array_equal(lab[:, :-1], source[:, 1:])
            np.testing.assert_array_equal(wts[:, :-1], att[:, 1:])
            assert (wts[:, -1] == 0).all()
        else:
            np.testing.assert_array_equal(lab, source)
            np.testing.assert_array_equal(wts, att)
    else:
        gathered = np.take_along_axis(last, pos[..., None], 1)
        np.testing.assert_allclose(feats, gathered if features == "last_hidden" else transform(gathered), rtol=1e-6)
        np.testing.assert_array_equal(lab, np.take_along_axis(source, pos, 1))
        np.testing.assert_array_equal(wts, w)


@pytest.mark.parametrize("variant", ["batch", "no_nc3"])
def test_variant_steps_trace(variant, base_config, tiny_bert_dir):
    """The :batch and :no_nc3 recipes build a step that traces to the expected outputs."""
    from flax import nnx

    from ncjax import convert, parallel
    from ncjax import step as step_lib

    c = _load_config(variant)
    c.penalty.positions = "masked" if variant == "batch" else c.penalty.positions
    model, _ = convert.load_model(tiny_bert_dir)
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    mesh = parallel.make_mesh(0)
    schedule = step_lib.make_schedule(c.optim, 10)
    tx = step_lib.make_optimizer(c.optim, schedule)
    from ncjax.terms import mlm, nc3

    spec = nc3.PenaltySpec.from_config(c.penalty)
    masking = mlm.MaskSpec((0, 2, 3, 4), 4, 54, 0.15, 6)
    loss_terms = [mlm.MLM(masking)]
    if spec.alpha > 0:
        loss_terms.append(nc3.NC3(spec, masking, np.array([5, 6, 7, 8], np.int32), 32))
    step_fn = step_lib.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=0, terms=loss_terms, dropout=True)
    shape = jax.ShapeDtypeStruct
    state = {"step": shape((), np.int32), "params": jax.tree.map(lambda x: shape(x.shape, x.dtype), params)}
    state["opt_state"] = jax.eval_shape(tx.init, state["params"])
    if spec.alpha > 0:
        state["terms"] = {"nc3": {"sums": shape((4, 32), np.float32), "counts": shape((4,), np.float32)}}
    batch = {"input_ids": shape((8, 16), np.int32), "attention_mask": shape((8, 16), np.int32)}
    new_state, metrics = jax.eval_shape(step_fn, state, batch)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    want = {"loss", "loss/mlm", "grad_norm", "lr", "masked_tokens", "tokens"}
    if spec.alpha > 0:
        want |= {"loss/nc3", "nc3_valid", "nc3_classes"}
    assert set(metrics) == want
