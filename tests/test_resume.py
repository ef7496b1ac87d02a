"""Resuming a run safely: one config per work directory, checkpoints that fall back, a stop on
non-finite parameters, and Ctrl-C handled like a preemption.

One uninterrupted run of test_train's tiny recipe (12 steps, checkpoints every 4, all kept) is
the reference. Damaged copies of its work directory resume and must end with an export that is
byte-for-byte the reference's; refused resumes must leave every file as it was.
"""

import json
import logging
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncjax import logs, resume
from ncjax.checkpoint import Checkpointer, CheckpointLayoutError, abstract_like, layout, layout_difference
from test_train import (  # noqa: F401  (fixtures: the shared run config and corpus, subprocess clean-up)
    _copy, _finish, _reap_subprocesses, _subprocess, base_config, corpus,
    EVERY, SLOW_STEPS, STEPS, signal_after_steps,
)


@pytest.fixture(scope="module")
def resume_config(base_config):
    """test_train's tiny run (12 steps, a checkpoint every 4), keeping every checkpoint: the damaged
    copies start from them."""
    return _copy(base_config, **{"checkpoint.max_to_keep": STEPS // EVERY, "log.tensorboard": False})


@pytest.fixture(scope="module")
def reference(resume_config, tmp_path_factory):
    from ncjax.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("reference")
    result = train_and_evaluate(resume_config, workdir)
    assert result["status"] == "completed" and result["step"] == STEPS
    return workdir


def _train(config, workdir, **kwargs):
    from ncjax.train import train_and_evaluate

    return train_and_evaluate(config, workdir, **kwargs)


def _resumable(reference: Path, workdir: Path, upto: int, config_json: bool = True) -> Path:
    """A copy of the reference run's directory as it was at step `upto` (its checkpoints up to
    there, and its config.json)."""
    for step in range(EVERY, upto + 1, EVERY):
        shutil.copytree(reference / "checkpoints" / str(step), workdir / "checkpoints" / str(step))
    if config_json:
        shutil.copy(reference / "config.json", workdir / "config.json")
    return workdir


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (but the lock record) -> its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _assert_same_export(workdir: Path, reference: Path) -> None:
    ours, ref = _files(workdir / "export" / "hf"), _files(reference / "export" / "hf")
    assert sorted(ours) == sorted(ref) and "model.safetensors" in ours
    for name in ref:
        assert ours[name] == ref[name], f"export/hf/{name} differs from the uninterrupted run's"


def _one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    assert "Tree" not in message and "PyTreeDef" not in message, message  # never orbax's tree dump
    return message


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- run identity


@pytest.mark.parametrize("key, value, shown", [
    ("penalty.alpha", 2.0, "penalty.alpha 1.0 -> 2.0"),
    ("train.batch_size", 16, "train.batch_size 8 -> 16"),
    ("optim.learning_rate", 1e-3, "optim.learning_rate 0.005 -> 0.001"),
    ("seed", 7, "seed 42 -> 7"),
    ("loss.terms", ("mlm",), 'loss.terms ["mlm", "nc3"] -> ["mlm"]'),
    ("penalty.mode", "batch", 'penalty.mode "reference" -> "batch"'),
    ("model.dropout", False, "model.dropout true -> false"),
    # fields that may change, but only when the flag names them
    ("train.num_steps", 16, "train.num_steps 12 -> 16"),
    ("checkpoint.every_steps", 2, "checkpoint.every_steps 4 -> 2"),
    ("log.tensorboard", True, "log.tensorboard false -> true"),
])
def test_changed_config_is_refused_naming_the_field(resume_config, reference, tmp_path, key, value, shown):
    workdir = _resumable(reference, tmp_path / "w", upto=4)
    before = _files(workdir)
    with pytest.raises(ValueError) as info:
        _train(_copy(resume_config, **{key: value}), workdir)
    message = _one_line(str(info.value))
    assert message.startswith(f"{workdir} holds a run of a different config ({shown}); rerun with the config "
                              f"recorded in {workdir / 'config.json'} or use a new --workdir"), message
    changeable = resume._matches(key, resume.CHANGEABLE)
    assert message.endswith(f"; --allow_config_change={key} allows that change." if changeable else "--workdir."), \
        message
    assert _files(workdir) == before  # config.json as it was, nothing written, nothing moved


def test_many_differences_are_summarised(resume_config, reference, tmp_path):
    workdir = _resumable(reference, tmp_path / "w", upto=4)
    changed = {"seed": 1, "penalty.alpha": 3.0, "optim.b1": 0.8, "optim.b2": 0.9, "data.min_words": 2,
               "train.num_steps": 20}
    with pytest.raises(ValueError) as info:
        _train(_copy(resume_config, **changed), workdir, allow_config_change="train.num_steps")
    message = _one_line(str(info.value))
    # sorted, four named, the allowed one left out, the rest counted
    assert ("(data.min_words 1 -> 2, optim.b1 0.9 -> 0.8, optim.b2 0.999 -> 0.9, penalty.alpha 1.0 -> 3.0 "
            "and 1 more)") in message, message
    assert "train.num_steps" not in message


@pytest.mark.parametrize("allow, culprit", [
    ("penalty.alpha", "names penalty.alpha, which changes what a run trains"),
    ("train.*", "names train.batch_size, which changes what a run trains"),
    ("log.*,nosuch.field", "names nosuch.field, which matches no config field"),
])
def test_allow_flag_refuses_fields_that_are_not_safe(resume_config, reference, tmp_path, allow, culprit):
    workdir = _resumable(reference, tmp_path / "w", upto=4)
    before = _files(workdir)
    with pytest.raises(ValueError) as info:
        _train(resume_config, workdir, allow_config_change=allow)
    message = _one_line(str(info.value))
    assert message.startswith(f"--allow_config_change {culprit}"), message
    assert _files(workdir) == before


def test_allowed_change_resumes_identically_and_updates_only_those_fields(resume_config, reference, tmp_path, caplog):
    """Saving more often and logging differently do not change the trajectory: the export is the
    reference's; config.json takes exactly the allowed new values, and the change is logged."""
    workdir = _resumable(reference, tmp_path / "w", upto=8)
    config = _copy(resume_config, **{"checkpoint.every_steps": 2, "log.peak_tflops": 2e-3})
    with caplog.at_level(logging.WARNING):
        result = _train(config, workdir, allow_config_change="checkpoint.every_steps, log.*")
    assert result["status"] == "completed" and result["step"] == STEPS
    _assert_same_export(workdir, reference)
    stored, ref = json.loads((workdir / "config.json").read_text()), json.loads((reference / "config.json").read_text())
    assert resume.differences(ref, stored) == [("checkpoint.every_steps", 4, 2), ("log.peak_tflops", 1e-3, 2e-3)]
    assert any(m.startswith("config changed on resume (allowed): checkpoint.every_steps 4 -> 2, log.peak_tflops "
                            "0.001 -> 0.002;") for m in _warnings(caplog)), _warnings(caplog)
    with Checkpointer(workdir / "checkpoints") as ck:
        assert ck.all_steps() == [8, 10, 12]


def test_missing_config_json_falls_back_to_the_checkpoint_record(resume_config, reference, tmp_path):
    workdir = _resumable(reference, tmp_path / "w", upto=4, config_json=False)
    with pytest.raises(ValueError) as info:
        _train(_copy(resume_config, **{"penalty.alpha": 2.0}), workdir)
    message = _one_line(str(info.value))
    assert "(penalty.alpha 1.0 -> 2.0)" in message and "(config.json is missing)" in message, message
    assert not (workdir / "config.json").exists()


def _cfg(**fields) -> dict:
    c = {"train": {"num_steps": 10, "batch_size": 8}, "penalty": {"alpha": 1.0},
         "parallel": {"num_devices": 0, "process_id": -1}, "log": {"progress": "auto"}}
    for key, value in fields.items():
        block, leaf = key.split(".")
        c[block][leaf] = value
    return c


def test_identity_records_and_replaces_until_a_checkpoint_exists(tmp_path, caplog):
    assert resume.check_identity(_cfg(), tmp_path) == []
    assert json.loads((tmp_path / "config.json").read_text()) == _cfg()
    # nothing trained yet (e.g. the first attempt stopped on a bad corpus): the new config replaces it
    with caplog.at_level(logging.WARNING):
        resume.check_identity(_cfg(**{"penalty.alpha": 5.0}), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["penalty"]["alpha"] == 5.0
    assert any("has no checkpoint yet: its config.json is replaced (penalty.alpha 1.0 -> 5.0)" in m
               for m in _warnings(caplog))
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"\(penalty.alpha 5.0 -> 1.0\)"):
        resume.check_identity(_cfg(), tmp_path)


def test_identity_ignores_the_process_layout_and_updates_allowed_fields(tmp_path):
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    resume.check_identity(_cfg(), tmp_path)
    original = (tmp_path / "config.json").read_bytes()
    # another device count or process id: no difference, config.json untouched
    assert resume.check_identity(_cfg(**{"parallel.num_devices": 1, "parallel.process_id": 3}), tmp_path) == []
    assert (tmp_path / "config.json").read_bytes() == original
    # a process other than 0 checks but never writes
    changed = _cfg(**{"train.num_steps": 20, "log.progress": "off"})
    assert resume.check_identity(changed, tmp_path, "train.num_steps,log.*", write=False) != []
    assert (tmp_path / "config.json").read_bytes() == original
    diffs = resume.check_identity(changed, tmp_path, ["train.num_steps", "log.*"])
    assert diffs == [("log.progress", "auto", "off"), ("train.num_steps", 10, 20)]
    assert json.loads((tmp_path / "config.json").read_text()) == _cfg(**{"train.num_steps": 20, "log.progress": "off"})


@pytest.mark.parametrize("text, culprit", [("{not json", "is not valid JSON"), ("[1, 2]", "holds no JSON object")])
def test_identity_refuses_an_unreadable_config_json(tmp_path, text, culprit):
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError) as info:
        resume.check_identity(_cfg(), tmp_path)
    assert _one_line(str(info.value)).startswith(f"{tmp_path / 'config.json'} {culprit}; restore it")
    assert (tmp_path / "config.json").read_text() == text


# ----------------------------------------------------------------------------- checkpoint layout


def test_checkpoint_of_another_layout_is_one_sentence(resume_config, reference, tmp_path):
    """config.json says alpha 0 (no NC3 statistics), the checkpoint holds them."""
    workdir = _resumable(reference, tmp_path / "w", upto=4, config_json=False)
    config = _copy(resume_config, **{"penalty.alpha": 0.0})
    (workdir / "config.json").write_text(config.to_json())
    with pytest.raises(CheckpointLayoutError) as info:
        _train(config, workdir)
    message = _one_line(str(info.value))
    assert message == (f"checkpoint {workdir / 'checkpoints' / '4'} holds a train state of another layout: it holds "
                       "terms.nc3, which this run's train state lacks; resume it with the config it was written "
                       "with, or use a new --workdir."), message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]  # refused, not moved aside


_SMALL = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)},
          "step": np.int32(0)}


def _small(**replace) -> dict:
    tree = {"params": dict(_SMALL["params"]), "step": _SMALL["step"]}
    for key, value in replace.items():
        block, leaf = key.split(".")
        if value is None:
            del tree[block][leaf]
        else:
            tree.setdefault(block, {})[leaf] = value
    return jax.tree.map(jnp.asarray, tree)


@pytest.mark.parametrize("change, expected", [
    ({"params.b": None}, "it holds params.b, which this run's train state lacks"),
    ({"terms.nc3": np.zeros(2, np.float32)}, "it lacks terms.nc3, which this run's train state has"),
    ({"params.w": np.zeros((4, 4), np.float32)}, "params.w is float32[3, 4] there but float32[4, 4] here"),
    ({"params.b": np.ones(4, np.int32)}, "params.b is float32[4] there but int32[4] here"),
])
def test_layout_difference_names_what_differs(tmp_path, change, expected):
    current = _small(**change)
    with Checkpointer(tmp_path) as ck:
        ck.save(4, _small(), {"step": 4})
        ck.wait()
        assert layout_difference(ck.stored_layout(4), layout(current)) == expected
        assert layout_difference(ck.stored_layout(4), layout(_small())) is None
        with pytest.raises(CheckpointLayoutError, match=f"{tmp_path / '4'} holds a train state of another layout: "):
            ck.restore_latest(abstract_like(current))
    assert (tmp_path / "4").is_dir()


# ----------------------------------------------------------------------------- damaged checkpoints


def _damage(step_dir: Path, kind: str) -> None:
    if kind == "empty":  # a step directory with nothing in it
        shutil.rmtree(step_dir)
        step_dir.mkdir()
    elif kind == "truncated":  # the array store's data files cut in half, as by a full disk
        data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data
        for path in data:
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 2)
    elif kind == "corrupt_meta":
        (step_dir / "meta" / "metadata").write_text("{not json")
    elif kind == "corrupt_tree_metadata":
        (step_dir / "state" / "_METADATA").write_text("")
    elif kind == "missing_state":
        shutil.rmtree(step_dir / "state")
    else:
        raise AssertionError(kind)


DAMAGE = ("empty", "truncated", "corrupt_meta", "corrupt_tree_metadata", "missing_state")


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_newest_checkpoint_is_moved_aside(tmp_path, caplog, kind):
    with Checkpointer(tmp_path) as ck:
        ck.save(4, _small(), {"step": 4})
        ck.save(8, _small(**{"params.b": np.full(4, 2.0, np.float32)}), {"step": 8})
    _damage(tmp_path / "8", kind)
    damaged = _files(tmp_path / "8")
    with Checkpointer(tmp_path) as ck, caplog.at_level(logging.WARNING):
        step, state, meta = ck.restore_latest(abstract_like(_small()))
        assert (step, meta) == (4, {"step": 4}) and ck.all_steps() == [4]
    np.testing.assert_array_equal(np.asarray(state["params"]["b"]), np.ones(4, np.float32))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("8.")]
    assert len(aside) == 1 and aside[0].name.startswith("8.damaged-"), list(tmp_path.iterdir())
    assert _files(aside[0]) == damaged  # moved, not deleted, not changed
    lines = [m for m in _warnings(caplog) if "moved aside" in m]
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint {tmp_path / '8'} cannot be read (") \
        and lines[0].endswith(f"): moved aside to {aside[0].name}"), lines
    _one_line(lines[0])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["4"]


def test_every_checkpoint_damaged_starts_over(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(4, _small(), {"step": 4})
    _damage(tmp_path / "4", "truncated")
    (tmp_path / "8").mkdir()
    with Checkpointer(tmp_path) as ck:
        assert ck.restore_latest(abstract_like(_small())) is None
        assert ck.all_steps() == []
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["4.damaged", "8.damaged"]


@pytest.mark.parametrize("poison", [np.inf, np.nan, 1e30])
def test_checkpoint_with_non_finite_parameters_is_skipped(tmp_path, caplog, poison):
    """1e30 is a float, but its square overflows float32: the next step's norms would too."""
    with Checkpointer(tmp_path) as ck:
        ck.save(4, _small(), {"step": 4})
        ck.save(8, _small(**{"params.b": np.array([1.0, poison, 1.0, 1.0], np.float32)}), {"step": 8})
    with Checkpointer(tmp_path) as ck, caplog.at_level(logging.WARNING):
        assert ck.restore_latest(abstract_like(_small()))[0] == 4
    assert [p.name.split("-")[0] for p in tmp_path.iterdir() if p.name.startswith("8")] == ["8.nonfinite"]
    assert any(m.startswith(f"checkpoint {tmp_path / '8'} has parameters that are not finite: moved aside to "
                            "8.nonfinite-") for m in _warnings(caplog))


def test_nan_stop_names_a_finite_checkpoint_and_marks_the_poisoned_one(tmp_path):
    from ncjax.train import check_finite

    with Checkpointer(tmp_path / "ck", max_to_keep=3) as ck:
        ck.save(4, _small(), {"step": 4})
        ck.save(8, _small(**{"params.w": np.full((3, 4), 1e30, np.float32)}), {"step": 8})
        ck.save(12, _small(), {"step": 12})
        ck.wait()
        _damage(tmp_path / "ck" / "12", "truncated")  # unreadable: skipped, but left where it is
        with pytest.raises(FloatingPointError) as info:
            check_finite(13, {"loss": float("nan"), "loss/mlm": 2.0}, ck, abstract_like(_small()))
    assert _one_line(str(info.value)) == (f"the loss became nan at step 13; training stopped and the last good "
                                          f"checkpoint is {tmp_path / 'ck' / '4'} (step 4).")
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "ck").iterdir())
    assert names == ["12", "4", "8.nonfinite"]


def test_parameters_blown_up_stop_before_they_are_saved(resume_config, reference, tmp_path, monkeypatch):
    """An injected fault: the update that makes step 8 leaves a parameter at infinity while that
    step's loss (computed before the update) is finite. The step-8 save refuses the state and
    names the step-4 checkpoint."""
    from ncjax import step as step_lib

    make = step_lib.make_train_step

    def faulty_step(*args, **kwargs):
        fn = make(*args, **kwargs)

        def step(state, batch):
            state, metrics = fn(state, batch)
            if int(state["step"]) == 8:
                b = state["params"]["embeddings"]["norm"]["bias"]
                state["params"]["embeddings"]["norm"]["bias"] = b.at[0].set(jnp.inf)
            return state, metrics

        return step

    monkeypatch.setattr(step_lib, "make_train_step", faulty_step)
    workdir = _resumable(reference, tmp_path / "w", upto=4)
    with pytest.raises(FloatingPointError) as info:
        _train(resume_config, workdir)
    message = _one_line(str(info.value))
    assert message.startswith("the parameters stopped being finite (loss ") and message.endswith(
        f") at step 8; training stopped and the last good checkpoint is {workdir / 'checkpoints' / '4'} (step 4)."), message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]
    assert not (workdir / "export").exists()


# ----------------------------------------------------------------------------- done when


@pytest.mark.parametrize("kind", ["truncated", "empty"])
def test_damaged_newest_checkpoint_resumes_bit_identical(resume_config, reference, tmp_path, kind):
    workdir = _resumable(reference, tmp_path / "w", upto=8)
    _damage(workdir / "checkpoints" / "8", kind)
    result = _train(resume_config, workdir)
    assert result["status"] == "completed" and result["step"] == STEPS
    _assert_same_export(workdir, reference)
    names = sorted(p.name.split("-")[0] for p in (workdir / "checkpoints").iterdir())
    assert names == ["12", "4", "8", "8.damaged"]  # resumed from 4, saved 8 and 12 again
    assert [r["step"] for r in logs.read_metrics(workdir / "metrics.jsonl")] == list(range(5, STEPS + 1))


_DIE_IN_SAVE = """
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def die_before_commit(self):
    # every file of the step-8 save is written; the rename that completes it never happens
    if self._final_path.name == "8":
        os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = die_before_commit
from ncjax.train import train_and_evaluate
train_and_evaluate(config, workdir)
"""


def test_kill_during_checkpoint_save_resumes_bit_identical(resume_config, reference, tmp_path):
    workdir = tmp_path / "killed"
    proc = _subprocess(_DIE_IN_SAVE, resume_config, workdir)
    out = _finish(proc, 240)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())
    with Checkpointer(workdir / "checkpoints") as ck:  # the unfinished save is no checkpoint
        assert ck.all_steps() == [4]
    result = _train(resume_config, workdir)
    assert result["status"] == "completed" and result["step"] == STEPS
    _assert_same_export(workdir, reference)
    assert [r["step"] for r in logs.read_metrics(workdir / "metrics.jsonl")] == list(range(1, STEPS + 1))


# ----------------------------------------------------------------------------- Ctrl-C


_SLOW_LAUNCH = SLOW_STEPS + """
import runpy
keys = ("model.path", "data.path", "data.cache_dir", "train.num_steps", "checkpoint.every_steps",
        "checkpoint.max_to_keep", "log.progress", "log.tensorboard")
sys.argv = ["launch/train.py", "--config", "configs/bert_nc3.py:tiny", "--workdir", workdir] + [
    f"--config.{k}={config[k.split('.')[0]][k.split('.')[1]]}" for k in keys]
runpy.run_path("launch/train.py", run_name="__main__")
"""


def test_ctrl_c_saves_a_checkpoint_and_exits_130(resume_config, tmp_path):
    workdir = tmp_path / "int"
    proc = _subprocess(_SLOW_LAUNCH, resume_config, workdir)
    out = signal_after_steps(proc, workdir, 3, signal.SIGINT)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    with Checkpointer(workdir / "checkpoints") as ck:
        step = ck.latest_step()
        assert 3 <= step < STEPS and ck.read_meta(step)["preempted"]
    assert last == (f"interrupted at step {step} of {STEPS}; checkpoint {workdir / 'checkpoints' / str(step)} saved; "
                    "rerun the same command to resume"), last
    assert any("received SIGINT: saving a checkpoint and stopping" in line for line in out.splitlines())
    assert not (workdir / "export").exists()
