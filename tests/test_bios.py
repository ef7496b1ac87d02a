"""Bias-in-Bios: gap metrics against hand-computed values, and a linear probe of the tiny fixture
on a synthetic set with a planted gender shortcut (train: the pronoun decides the profession)."""

import json

import numpy as np
import pytest

from ncjax import bench
from ncjax.bench import bios

NAMES = bios.professions()
NURSE, PHYSICIAN = NAMES.index("nurse"), NAMES.index("physician")


def test_professions_and_scores_by_hand():
    assert len(NAMES) == 28 and NAMES[0] == "accountant"
    y = np.array([NURSE, NURSE, PHYSICIAN, PHYSICIAN, NURSE, 0])
    g = np.array([1, 0, 0, 1, 1, 0])
    p = np.array([NURSE, PHYSICIAN, PHYSICIAN, NURSE, NURSE, 0])
    s = bios.scores(y, g, p)
    assert s["acc"] == pytest.approx(400 / 6)
    assert s["acc_m"] == pytest.approx(200 / 3) and s["acc_f"] == pytest.approx(200 / 3) and s["tpr_gap"] == 0
    assert s["per_profession"]["nurse"] == pytest.approx(-100.0)  # M 0/1, F 2/2
    assert s["per_profession"]["physician"] == pytest.approx(100.0)  # M 1/1, F 0/1
    assert s["per_profession"]["accountant"] is None  # no female accountant
    assert s["tpr_rms"] == pytest.approx(100.0)


def _write(path, rows):
    path.write_text("".join(json.dumps({"hard_text": t, "profession": y, "gender": g}) + "\n" for t, y, g in rows))


def test_planted_shortcut_probe_end_to_end(tiny_bert_dir, tmp_path):
    she, he = "she worked at the hospital .", "he worked at the hospital ."
    _write(tmp_path / "train.jsonl", [(she, "nurse", "F")] * 12 + [(he, "physician", "M")] * 12)
    test = ([(she, NURSE, 1)] * 3 + [(she, PHYSICIAN, 1)] * 2 + [(he, PHYSICIAN, 0)] * 3 + [(he, NURSE, 0)])
    _write(tmp_path / "test.jsonl", test)
    r = bench.evaluate(tiny_bert_dir, "bios", bios_dir=tmp_path, progress=False, per_example=tmp_path / "ex.jsonl")
    b = r["bios"]
    # The probe follows the pronoun: she -> nurse, he -> physician.
    assert b["acc_f"] == pytest.approx(60.0) and b["acc_m"] == pytest.approx(75.0)
    assert b["tpr_gap"] == pytest.approx(15.0) and b["acc"] == pytest.approx(600 / 9)
    assert b["per_profession"]["nurse"] == pytest.approx(-100.0)
    assert b["per_profession"]["physician"] == pytest.approx(100.0)
    assert b["tpr_rms"] == pytest.approx(100.0) and b["setting"] == "probe"
    ex = [json.loads(x) for x in (tmp_path / "ex.jsonl").read_text().splitlines()]
    assert [e["prediction"] for e in ex] == ["nurse"] * 5 + ["physician"] * 4
    assert "| Bias-in-Bios | probe |" in bench.markdown(r)


def test_missing_data_is_one_line(tmp_path, caplog):
    caplog.set_level("WARNING", logger="ncjax")
    r = bench.evaluate("unused-model", "bios", bios_dir=tmp_path, progress=False)
    assert "bios" not in r
    assert "Bias-in-Bios skipped: no data; put train/dev/test .jsonl" in caplog.text
    _write(tmp_path / "train.jsonl", [("x", "nurse", "F")])
    with pytest.raises(FileNotFoundError, match=r"has no test\.jsonl or test\.parquet"):
        bios.load_local(tmp_path)
    _write(tmp_path / "test.jsonl", [("x", "astronaut", "F")])
    with pytest.raises(ValueError, match=r"test\.jsonl: profession 'astronaut' is not one of the 28"):
        bios.load_local(tmp_path)
