"""Bias-in-Bios occupation classification: accuracy by gender, TPR-GAP and TPR-RMS.

Data: the hub dataset `LabHC/bias_in_bios` (De-Arteaga et al. 2019; splits train/dev/test with
`hard_text`, `profession` (0..27, the order of the bundled `prof2ind.json`) and `gender`
(0 male, 1 female)), read through `datasets` when online, or a local --bios-dir holding
`train`, `dev` and `test` as `.jsonl` or `.parquet` files with those fields (profession may also
be the name, gender also "M"/"F"). Without either, the benchmark is skipped with one line saying
how to get the data.

Settings (`--bios-setting`):
- `probe` (default, fast): the encoder stays frozen; a multinomial logistic regression
  (scikit-learn, lbfgs) is trained on the [CLS] vector of the last layer of the train split.
- `finetune`: the encoder and a BertForSequenceClassification head are fine-tuned on train
  through the shared fine-tuning loop (max length 128, batch 32, lr 2e-5, 3 epochs by default).
Both are scored on the test split.

Metrics (percent / points): acc, acc_m, acc_f; tpr_gap = 100 * (acc_M - acc_F); per profession
y, TPR_{y,g} is the recall of y among biographies of gender g and per_profession[y] =
100 * (TPR_{y,M} - TPR_{y,F}); tpr_rms = sqrt(mean over professions of per_profession^2)
(professions where either gender has no test biography are left out, and show None).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ncjax import files
from ncjax.bench import finetune as ft
from ncjax.bench import runs
from ncjax.bench.heads import SequenceHead
from ncjax.bench.registry import Benchmark, Context, Option, fmt

log = logging.getLogger(__name__)

PROF2IND = files.resource_path("bios", "prof2ind.json")
SPLITS = ("train", "dev", "test")
SETTINGS = ("probe", "finetune")
HOW_TO_GET = ("put train/dev/test .jsonl (hard_text, profession, gender) in --bios-dir, e.g. on a machine with "
              "network: python -c \"from datasets import load_dataset; d = load_dataset('LabHC/bias_in_bios'); "
              "[d[s].to_json(f'DIR/{s}.jsonl') for s in ('train', 'dev', 'test')]\"")


def professions() -> list[str]:
    """The 28 profession names in class-index order."""
    mapping = json.loads(PROF2IND.read_text(encoding="utf-8"))
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]


def _normalise(rows: dict[str, list[Any]], where: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = professions()
    for key in ("hard_text", "profession", "gender"):
        if key not in rows:
            raise ValueError(f"{where} has no {key!r} field; Bias-in-Bios rows need hard_text, profession, gender.")
    prof, gender = [], []
    for p, g in zip(rows["profession"], rows["gender"]):
        if isinstance(p, str):
            if p not in names:
                raise ValueError(f"{where}: profession {p!r} is not one of the 28 in {PROF2IND.name}.")
            p = names.index(p)
        if not 0 <= int(p) < len(names):
            raise ValueError(f"{where}: profession index {p} is outside 0..{len(names) - 1}.")
        prof.append(int(p))
        g = {"M": 0, "F": 1, "m": 0, "f": 1}.get(g, g) if isinstance(g, str) else g
        if g not in (0, 1):
            raise ValueError(f"{where}: gender {g!r} is not 0/1 (male/female) or M/F.")
        gender.append(int(g))
    return list(rows["hard_text"]), np.asarray(prof, np.int32), np.asarray(gender, np.int32)


def load_local(directory: Path) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]] | None:
    """{split: (texts, professions, genders)} from DIR/{train,dev,test}.{jsonl,parquet}; None if none exist."""
    found = {s: [directory / f"{s}.{ext}" for ext in ("jsonl", "parquet") if (directory / f"{s}.{ext}").is_file()]
             for s in SPLITS}
    if not any(found.values()):
        return None
    out = {}
    for s in ("train", "test"):
        if not found[s]:
            raise FileNotFoundError(f"Bias-in-Bios directory {directory} has no {s}.jsonl or {s}.parquet; "
                                    f"{HOW_TO_GET}.")
        f = found[s][0]
        from datasets import load_dataset

        d = load_dataset("json" if f.suffix == ".jsonl" else "parquet", data_files=str(f), split="train")
        out[s] = _normalise(d.to_dict(), str(f))
    return out


def load_hub() -> dict[str, tuple[list[str], np.ndarray, np.ndarray]] | None:
    try:
        from datasets import load_dataset

        d = load_dataset("LabHC/bias_in_bios")
    except Exception as e:  # offline, or not in the cache
        log.debug("LabHC/bias_in_bios from the hub: %s", e)
        return None
    return {s: _normalise(d[s].to_dict(), f"LabHC/bias_in_bios:{s}") for s in ("train", "test")}


def scores(labels: np.ndarray, genders: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """acc/acc_m/acc_f (percent), tpr_gap, tpr_rms and per_profession gaps (points)."""
    ok = pred == labels

    def pct(mask: np.ndarray) -> float | None:
        return 100.0 * float(ok[mask].mean()) if mask.any() else None

    acc_m, acc_f = pct(genders == 0), pct(genders == 1)
    names = professions()
    per: dict[str, float | None] = {}
    for y, name in enumerate(names):
        m, f = (labels == y) & (genders == 0), (labels == y) & (genders == 1)
        per[name] = None if not m.any() or not f.any() else 100.0 * (float(ok[m].mean()) - float(ok[f].mean()))
    gaps = [g for g in per.values() if g is not None]
    return {"acc": pct(np.ones_like(ok)), "acc_m": acc_m, "acc_f": acc_f,
            "tpr_gap": None if acc_m is None or acc_f is None else acc_m - acc_f,
            "tpr_rms": float(np.sqrt(np.mean(np.square(gaps)))) if gaps else None, "per_profession": per}


class _CLS:
    """A 'head' that returns the last layer's [CLS] vector (the frozen features of the probe)."""

    def logits(self, params: Any, h: Any, batch: Any, key: Any) -> Any:
        return h[:, 0]


def _run(ctx: Context) -> dict[str, Any]:
    o = ctx.options
    data = load_local(Path(o["bios_dir"])) if o["bios_dir"] else load_hub()
    if data is None:
        log.warning("Bias-in-Bios skipped: no data; %s.", HOW_TO_GET)
        return {}
    enc = runs.load_encoder(ctx)
    n_train = runs.train_limit(ctx)
    (tr_text, tr_y, _), (te_text, te_y, te_g) = data["train"], data["test"]
    tr_text, tr_y = tr_text[:n_train], tr_y[:n_train]
    te_text, te_y, te_g = te_text[:ctx.limit], te_y[:ctx.limit], te_g[:ctx.limit]
    hp, max_length = runs.hparams(ctx, max_length=128)

    def encoded(texts: list[str], y: np.ndarray) -> ft.Encoded:
        ids, types = ft.encode_texts(enc.tokenizer, texts, None, max_length)
        return ft.Encoded(ids, types, {"labels": y})

    train, test = encoded(tr_text, tr_y), encoded(te_text, te_y)
    if o["bios_setting"] == "probe":
        from sklearn.linear_model import LogisticRegression

        params = {"encoder": enc.model.encoder, "head": {}}
        feats = [ft.predict(enc.model, _CLS(), params, d, max_length=max_length, batch_size=hp.eval_batch_size)
                 for d in (train, test)]
        clf = LogisticRegression(max_iter=2000, random_state=o["seed"]).fit(feats[0], tr_y)
        pred = clf.predict(feats[1])
    else:
        logits = runs.run(ctx, "bios", enc, SequenceHead(len(professions()), enc.model_dropout), train,
                          {"test": test}, hp, max_length)
        pred = logits["test"].argmax(-1)
    names = professions()
    ctx.record("bios", [{"index": i, "gender": "MF"[g], "profession": names[y], "prediction": names[p]}
                        for i, (y, g, p) in enumerate(zip(te_y, te_g, pred))])
    return {"bios": {**scores(te_y, te_g, np.asarray(pred)), "setting": o["bios_setting"]}}


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    b = results.get("bios")
    if b is None:
        return []
    return [("Bias-in-Bios", b["setting"], f"acc {fmt(b['acc'])} · M {fmt(b['acc_m'])} · F {fmt(b['acc_f'])} · "
                                           f"TPR-GAP {fmt(b['tpr_gap'])} · TPR-RMS {fmt(b['tpr_rms'])}")]


BENCHMARK = Benchmark(
    name="bios", title="Bias-in-Bios", kind="finetune", data=(), run=_run, rows=_rows, default=False,
    options=(
        Option("bios_dir", None, "directory with Bias-in-Bios train/dev/test .jsonl or .parquet (default: the hub "
               "dataset LabHC/bias_in_bios when online)"),
        Option("bios_setting", "probe", "Bias-in-Bios: linear probe on frozen [CLS] features, or full fine-tuning",
               choices=SETTINGS),
        *runs.OPTIONS,
    ),
)
