"""The experiment grid (ncjax.grid, ncjax.summary, launch/reproduce.py).

The `:tiny` grid (2 recipes x 2 arms x 2 seeds + the base model, on the test fixture) runs once
uninterrupted in-process; a copy without its last two cells is started as `launch/reproduce.py`,
SIGKILLed while cell 7 is training, and rerun: its report must equal the uninterrupted one number for number,
and the report's aggregates must equal a recomputation from the per-cell JSON files with scipy.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from ncjax import grid, summary
from conftest import load_module

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = {
    # bios has no data offline: every cell skips it and the report says so
    "evaluate.benchmarks": "crows,winobias-probe,bios",
    "train_overrides": "train.num_steps=6;checkpoint.every_steps=3;log.tensorboard=false;"
                       "data.path=tests/fixtures/gender_lines.txt",
    "measure.class_sets": "gender-adept,all",
}


def _tiny_grid():
    c = load_module(REPO / "configs" / "reproduce.py", "reproduce_config").get_config("tiny")
    for key, value in OVERRIDES.items():
        node, *_ = [c]
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grid_a")
    cwd = os.getcwd()
    os.chdir(REPO)  # recipe configs name the fixture relative to the checkout
    try:
        report = grid.run(_tiny_grid(), workdir)
    finally:
        os.chdir(cwd)
    return workdir, report


def test_report_files_and_rows(uninterrupted):
    workdir, report = uninterrupted
    assert report["cells_expected"] == 9 and not report["cells_missing"]
    assert [r["row"] for r in report["rows"]] == ["base", "bec", "bec + NC3", "cda", "cda + NC3"]
    for name in ("report.md", "report.json", "metrics.png", "curves.png"):
        assert (workdir / name).is_file(), name
    # the UNC3 vs SS scatter needs StereoSet, which this grid leaves out
    assert not (workdir / "unc3_vs_ss.png").exists() and "![metrics](metrics.png)" in (workdir / "report.md").read_text()
    json.loads((workdir / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    md = (workdir / "report.md").read_text()
    assert "| bec + NC3 |" in md and "Significant at 95 %" in md and "Not significant" in md
    assert report["benchmarks_skipped"] == ["bios"] and "skipped for lack of data: bios" in md
    # the baseline arm trains without the penalty, the +NC3 arm with it
    cfg = json.loads((workdir / "cells" / "001-bec-baseline-s0" / "cell.json").read_text())["train"]["config"]
    assert cfg["penalty"]["alpha"] == 0 and cfg["seed"] == 0
    cfg = json.loads((workdir / "cells" / "004-bec-nc3-s1" / "cell.json").read_text())["train"]["config"]
    assert cfg["penalty"]["alpha"] > 0 and cfg["seed"] == 1


def test_aggregate_equals_recomputation(uninterrupted):
    workdir, report = uninterrupted

    def cell(name):
        d = workdir / "cells" / name
        return json.loads((d / "eval.json").read_text()), json.loads((d / "nc.json").read_text())

    for recipe in ("bec", "cda"):
        first = 1 if recipe == "bec" else 5
        names = {("baseline", s): f"{first + s:03d}-{recipe}-baseline-s{s}" for s in (0, 1)}
        names |= {("nc3", s): f"{first + 2 + s:03d}-{recipe}-nc3-s{s}" for s in (0, 1)}
        unc3 = {k: cell(v)[1]["gender-adept"]["unc3_cos_std"] for k, v in names.items()}
        crows = {k: cell(v)[0]["crows"]["gender"]["metric"] for k, v in names.items()}
        rows = {r["row"]: r for r in report["rows"]}
        for arm, label in (("baseline", recipe), ("nc3", f"{recipe} + NC3")):
            xs = [unc3[(arm, s)] for s in (0, 1)]
            got = rows[label]["metrics"]["unc3"]
            assert got["mean"] == pytest.approx(np.mean(xs), abs=1e-12)
            assert got["std"] == pytest.approx(np.std(xs, ddof=1), abs=1e-12)
            assert rows[label]["metrics"]["crows"]["mean"] == pytest.approx(np.mean([crows[(arm, s)] for s in (0, 1)]))
        d = np.array([unc3[("nc3", s)] - unc3[("baseline", s)] for s in (0, 1)])
        eff = report["effects"][recipe]["unc3"]
        assert eff["mean"] == pytest.approx(d.mean(), abs=1e-12)
        lo, hi = scipy.stats.t.interval(0.95, df=1, loc=d.mean(), scale=scipy.stats.sem(d))
        assert eff["ci95"] == pytest.approx([lo, hi], rel=1e-3)
        assert eff["significant"] == (lo > 0 or hi < 0)
    base = next(r for r in report["rows"] if r["row"] == "base")
    assert base["metrics"]["unc3"]["mean"] == pytest.approx(cell("000-base")[1]["gender-adept"]["unc3_cos_std"])


def test_kill_mid_grid_and_resume_gives_identical_report(uninterrupted, tmp_path):
    done_dir, want = uninterrupted
    workdir = tmp_path / "grid_b"
    # the finished grid without its last two cells and its report: the rerun must skip cells
    # 0-6, train 7 and 8 (7 again after the kill) and aggregate to the same report
    shutil.copytree(done_dir, workdir)
    for cell in ("007-cda-nc3-s0", "008-cda-nc3-s1"):
        shutil.rmtree(workdir / "cells" / cell)
    for p in workdir.iterdir():
        if p.is_file() and p.name.startswith(("report.", "metrics.", "curves.", "unc3_vs_ss.")):
            p.unlink()
    args = [sys.executable, str(REPO / "launch" / "reproduce.py"), "--config", str(REPO / "configs" / "reproduce.py:tiny"),
            "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    target = workdir / "cells" / "007-cda-nc3-s0" / "train" / "checkpoints"
    deadline = time.time() + 300
    try:
        while not (target.is_dir() and any(p.name.isdigit() for p in target.iterdir())):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the grid did not reach cell 7 in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (workdir / "cells" / "008-cda-nc3-s1").exists()
    assert not (workdir / "report.json").exists()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((workdir / "report.json").read_text())
    assert got["cells"] == want["cells"]
    assert got["rows"] == want["rows"]
    assert got["effects"] == want["effects"]
    assert got["nc"] == want["nc"]


def test_grid_refuses_other_config_and_bad_inputs(tmp_path):
    c = _tiny_grid()
    grid.check_identity(c, tmp_path)
    other = _tiny_grid()
    other.arms.baseline_overrides = "penalty.alpha=0.5"
    with pytest.raises(ValueError, match=r"different config \(arms.baseline_overrides differ\)"):
        grid.check_identity(other, tmp_path)
    more = _tiny_grid()
    more.seeds = "0,1,2"  # adding seeds keeps every finished cell valid
    grid.check_identity(more, tmp_path)
    fewer = _tiny_grid()
    fewer.seeds = "1"
    with pytest.raises(ValueError, match="seeds differ"):
        grid.check_identity(fewer, tmp_path)
    bad = _tiny_grid()
    bad.recipes = "bec,mabel_x"
    with pytest.raises(ValueError, match="names 'mabel_x', which is not in recipe"):
        grid.cells(bad)
    with pytest.raises(ValueError, match="outside the grid's 9 cells"):
        grid.run_cell(c, tmp_path, 9)
    with pytest.raises(ValueError, match="no field 'alhpa'"):
        grid.apply_overrides(grid.recipe_config("configs/bert_nc3.py:tiny"), ["penalty.alhpa=1"])
    with pytest.raises(FileNotFoundError, match="holds no grid"):
        summary.aggregate(tmp_path / "empty")


def test_cli_rejects_other_config_in_one_line(tmp_path):
    c = _tiny_grid()
    grid.check_identity(c, tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "reproduce.py"), "--config", str(REPO / "configs" / "reproduce.py:tiny"),
         "--workdir", str(tmp_path), "--config.seeds=5", "--cell", "0"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "different config" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("df", [1, 2, 5, 10, 29, 30])
def test_t_quantile_table(df):
    assert summary.t975(df) == pytest.approx(scipy.stats.t.ppf(0.975, df), abs=1e-3)


def test_paired_effect_and_mean_std_by_hand():
    eff = summary.paired_effect({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.1, 2: 3.9, 3: 9.0})
    d = np.array([1.0, 1.1, 0.9])
    assert eff["n"] == 3 and eff["seeds"] == [0, 1, 2] and eff["mean"] == pytest.approx(1.0)
    half = scipy.stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert eff["ci95"] == pytest.approx([1.0 - half, 1.0 + half], rel=1e-3)
    assert eff["significant"] and eff["sign_consistency"] == 1.0
    wide = summary.paired_effect({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 2.5, 2: 4.5})
    assert wide["mean"] == pytest.approx(1.0) and wide["sign_consistency"] == 1.0 and not wide["significant"]
    mixed = summary.paired_effect({0: 0.0, 1: 0.0}, {0: 1.0, 1: -3.0})
    assert mixed["mean"] == -1.0 and mixed["sign_consistency"] == 0.5 and not mixed["significant"]
    assert summary.mean_std([1.0, None, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2,
                                                  "values": [1.0, 3.0]}
    assert summary.mean_std([4.0])["std"] is None


@pytest.mark.parametrize("variant", ["minilm_quick", "minilm", "bert_base"])
def test_every_variant_builds_each_cell_config(variant, monkeypatch, tiny_bert_dir):
    """Each cell's training config loads (recipe file, variant, overrides); the baseline arm differs
    from +NC3 only by the NC3 weight; the MiniLM grids start from the warmed-up masked LM."""
    from ncjax import weights

    monkeypatch.setenv(weights.WARM_MINILM_ENV, str(tiny_bert_dir))  # stands in for the warm-up's export
    c = load_module(REPO / "configs" / "reproduce.py", "reproduce_config").get_config(variant)
    all_cells = grid.cells(c)
    assert len(all_cells) == 1 + len(c.recipes.split(",")) * 2 * 3
    by_key = {}
    for cell in all_cells[1:]:
        config = grid.cell_config(c, cell)
        by_key[cell.recipe, cell.arm, cell.seed] = json.loads(config.to_json())
        assert config.seed == cell.seed
        expected = "minilm-mlm" if variant.startswith("minilm") else "bert-base-uncased"
        assert (config.model.path, config.model.init_missing_head) == (expected, False)
    for (recipe, arm, seed), nc3 in by_key.items():
        if arm == "nc3":
            base = by_key[recipe, "baseline", seed]
            assert nc3["penalty"]["alpha"] > 0 and base["penalty"]["alpha"] == 0
            nc3["penalty"]["alpha"] = 0
            assert nc3 == base
    assert grid.base_model(c)[0] == ("minilm-mlm" if variant.startswith("minilm") else "bert-base-uncased")
    if variant != "minilm_quick":
        assert {"glue", "coref", "bios"} <= set(c.evaluate.benchmarks.split(","))


def test_measure_corpus_resolves_bundled_names_and_paths():
    assert grid._resource_or_path("bundled:gap_flipped").name == "gap_flipped.tsv"
    assert grid._resource_or_path("bundled:gap_flipped").is_file()
    assert grid._resource_or_path("tests/fixtures/gender_lines.txt").is_file()
