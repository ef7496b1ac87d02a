"""A training checkpoint step (`<workdir>/checkpoints/<step>/`) as a model source.

One tiny 8-device run (test_train's recipe, 12 steps, checkpoints at 4, 8 and 12, a periodic
export at step 8) is the reference: its last checkpoint must export bit-for-bit to the run's
final export, on 1 device as well; the step already exported is reused; every tool reads a step.
"""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import load_module, scores_close
from ncjax import convert, snapshot, weights
from test_train import _copy, base_config, corpus  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(base_config, tmp_path_factory):  # noqa: F811
    from ncjax.train import train_and_evaluate

    cfg = _copy(base_config, **{"checkpoint.max_to_keep": 3, "export.every_steps": 8, "log.tensorboard": False})
    workdir = tmp_path_factory.mktemp("snapshot_run")
    assert train_and_evaluate(cfg, workdir)["status"] == "completed"
    return workdir


def _tensors(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def _copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("cache", "tensorboard"))
    return dst


def test_training_writes_the_model_files(run):
    model_dir = run / snapshot.MODEL_DIR
    assert json.loads((model_dir / "config.json").read_text()) == json.loads((run / "export" / "hf" / "config.json").read_text())
    assert convert.has_tokenizer(model_dir)


def test_last_checkpoint_exports_bit_exactly_as_the_final_export(run, tmp_path):
    work = _copy_run(run, tmp_path)
    step = work / "checkpoints" / "12"
    assert snapshot.is_step_dir(step) and not snapshot.is_step_dir(work / "checkpoints")
    resolved = weights.resolve_source(step)
    assert resolved == work / "export" / "step_12" / "hf"
    _assert_same(_tensors(resolved), _tensors(work / "export" / "hf"))
    assert json.loads((resolved / "config.json").read_text()) == json.loads((work / "export" / "hf" / "config.json").read_text())
    assert (resolved / "tokenizer.json").is_file() and (resolved / "vocab.txt").is_file()
    # what transformers reads is what ncjax reads
    from transformers import AutoModelForMaskedLM

    _, info = AutoModelForMaskedLM.from_pretrained(str(resolved), output_loading_info=True)
    assert not [k for k in info["missing_keys"] if "position_ids" not in k] and not info["unexpected_keys"]


def test_an_exported_step_is_reused_and_not_rewritten(run, tmp_path):
    work = _copy_run(run, tmp_path)
    periodic = work / "export" / "step_8" / "hf"
    before = {p.name: p.stat().st_mtime_ns for p in periodic.iterdir()}
    time.sleep(0.01)
    assert weights.resolve_source(work / "checkpoints" / "8") == periodic
    assert {p.name: p.stat().st_mtime_ns for p in periodic.iterdir()} == before
    # and it holds exactly that checkpoint's parameters
    shutil.rmtree(periodic)
    _assert_same(_tensors(weights.resolve_source(work / "checkpoints" / "8")), _tensors(run / "export" / "step_8" / "hf"))


def test_convert_and_both_bench_backends_read_a_step(run, tmp_path):
    from ncjax import bench
    from ncjax.bench.scorer import load_scorer

    work = _copy_run(run, tmp_path)
    step = work / "checkpoints" / "4"
    cli = load_module(ROOT / "launch" / "convert.py", "convert_cli")
    assert cli.main([str(step), str(tmp_path / "ncjax4"), "--to", "ncjax"]) == 0
    a, _ = convert.load_model(tmp_path / "ncjax4")
    b, _ = convert.load_model(step)
    pa, pb = convert.model_params(a), convert.model_params(b)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)

    results = {}
    for backend in ("jax", "torch"):
        if backend == "torch":
            pytest.importorskip("torch")
        results[backend] = bench.evaluate(load_scorer(step, backend, batch_size=4), "crows,becpro", limit=3,
                                          progress=False)
    for key in ("crows", "becpro"):
        assert scores_close(results["jax"][key], results["torch"][key]), key


def test_measure_collapse_reads_a_step(run, tmp_path, corpus):  # noqa: F811
    work = _copy_run(run, tmp_path)
    cli = load_module(ROOT / "launch" / "measure_collapse.py", "measure_collapse")
    out = tmp_path / "nc.json"
    assert cli.main(["--model", str(work / "checkpoints" / "4"), "--model", str(work / "export" / "hf"),
                     "--corpus", str(corpus), "--classes", "gender-gnglove", "--batch-size", "8",
                     "--output", str(out)]) == 0
    step4, final = json.loads(out.read_text())
    assert np.isfinite(step4["nc1_cdnv"]) and step4["nc1_cdnv"] != final["nc1_cdnv"]


def test_a_workdir_without_model_files_uses_the_checkpoints_model_path(run, tmp_path):
    work = _copy_run(run, tmp_path)
    shutil.rmtree(work / snapshot.MODEL_DIR)
    shutil.rmtree(work / "export")
    _assert_same(_tensors(weights.resolve_source(work / "checkpoints" / "12")), _tensors(run / "export" / "hf"))

    shutil.rmtree(work / "export")
    meta_file = work / "checkpoints" / "12" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["config"]["model"]["path"] = str(tmp_path / "moved_away")
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match=r"has no model/ directory and the checkpoint's model.path .*moved_away"):
        weights.resolve_source(work / "checkpoints" / "12")
    assert not (work / "export").exists()


def test_another_models_config_is_refused(run, tmp_path):
    work = _copy_run(run, tmp_path)
    cfg_file = work / snapshot.MODEL_DIR / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["hidden_size"] *= 2
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="holds parameters of another model than .*config.json describes"):
        weights.resolve_source(work / "checkpoints" / "4")
    assert not (work / "export" / "step_4").exists()


def test_a_damaged_step_is_named(run, tmp_path):
    work = _copy_run(run, tmp_path)
    step = work / "checkpoints" / "4"
    for root, _, names in os.walk(step / "state"):
        for name in names:
            if name != "_METADATA" and not name.endswith(".txt"):
                Path(root, name).write_bytes(b"\0" * 7)
    with pytest.raises(ValueError, match=f"{step / 'state'} is truncated or corrupt"):
        weights.resolve_source(step)
    assert not (work / "export" / "step_4").exists()


def test_stacked_layers_and_an_own_decoder_export_exactly(base_config, tmp_path):  # noqa: F811
    from ncjax.train import train_and_evaluate

    cfg = _copy(base_config, **{"train.num_steps": 2, "checkpoint.every_steps": 2, "log.tensorboard": False,
                                "model.scan_layers": True, "model.untie_decoder": True,
                                "parallel.num_devices": 1})
    assert train_and_evaluate(cfg, tmp_path)["status"] == "completed"
    _assert_same(_tensors(weights.resolve_source(tmp_path / "checkpoints" / "2")), _tensors(tmp_path / "export" / "hf"))


