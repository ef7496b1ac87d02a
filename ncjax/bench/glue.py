"""GLUE: fine-tune the encoder on each task and score its dev set, as transformers' run_glue does.

Tasks (results key: metrics): cola (matthews), sst2 (accuracy), mrpc (accuracy, f1), stsb
(pearson, spearman), qqp (accuracy, f1), mnli (accuracy on dev_matched), mnli_mm (accuracy on
dev_mismatched, same fine-tuned model), qnli (accuracy), rte (accuracy). Metrics come from
scikit-learn (accuracy, F1 of the positive class, Matthews) and scipy (Pearson, Spearman), as the
`evaluate` GLUE metric computes them. `glue.average` is the mean over the tasks run of each task's
mean metric (MRPC, QQP, STS-B average their two metrics; MNLI counts once, the mean of m and mm).

Defaults are run_glue's: max length 128, batch 32, learning rate 2e-5, 3 epochs, linear decay,
no warm-up, weight decay 0; the head is BertForSequenceClassification's (pooler + linear;
regression for STS-B); the seed is the suite's --seed.

Data, per task: a GLUE directory as the GLUE download script writes it (`train.tsv` and
`dev.tsv`; MNLI `dev_matched.tsv`/`dev_mismatched.tsv`; MRPC may instead carry the original
`msr_paraphrase_train.txt` with `dev_ids.tsv`, as the download script does, and train is those
rows minus the dev pairs) under --glue-dir (default: the bundled RTE, MRPC, STS-B, CoLA, SST-2 in
`ncjax/resources/glue/`); for a task without a directory the hub dataset `glue` is read through
`datasets` when online. A task with neither is skipped with one line saying where to put it; a
directory that lacks a split is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ncjax import files
from ncjax.bench import finetune as ft
from ncjax.bench import runs
from ncjax.bench.heads import SequenceHead
from ncjax.bench.registry import Benchmark, Context, Option, comma_list, fmt

log = logging.getLogger(__name__)

GLUE_DIR = files.resource_path("glue")


@dataclasses.dataclass(frozen=True)
class Task:
    """dir: GLUE directory name; columns: text column(s) and label column of the TSV (names, or
    indices for header-less CoLA); labels: class names in the hub dataset's order (None: regression);
    dev: {results key: dev file}; metrics: what each dev set reports."""

    dir: str
    columns: tuple[Any, ...]
    labels: tuple[str, ...] | None
    dev: dict[str, str]
    metrics: tuple[str, ...]
    hub_text: tuple[str, ...]
    hub_dev: dict[str, str]


TASKS: dict[str, Task] = {
    "cola": Task("CoLA", (3, 1), ("0", "1"), {"cola": "dev.tsv"}, ("matthews",), ("sentence",),
                 {"cola": "validation"}),
    "sst2": Task("SST-2", ("sentence", "label"), ("0", "1"), {"sst2": "dev.tsv"}, ("accuracy",), ("sentence",),
                 {"sst2": "validation"}),
    "mrpc": Task("MRPC", ("#1 String", "#2 String", "Quality"), ("0", "1"), {"mrpc": "dev.tsv"}, ("accuracy", "f1"),
                 ("sentence1", "sentence2"), {"mrpc": "validation"}),
    "stsb": Task("STS-B", ("sentence1", "sentence2", "score"), None, {"stsb": "dev.tsv"}, ("pearson", "spearman"),
                 ("sentence1", "sentence2"), {"stsb": "validation"}),
    "qqp": Task("QQP", ("question1", "question2", "is_duplicate"), ("0", "1"), {"qqp": "dev.tsv"},
                ("accuracy", "f1"), ("question1", "question2"), {"qqp": "validation"}),
    "mnli": Task("MNLI", ("sentence1", "sentence2", "gold_label"), ("entailment", "neutral", "contradiction"),
                 {"mnli": "dev_matched.tsv", "mnli_mm": "dev_mismatched.tsv"}, ("accuracy",),
                 ("premise", "hypothesis"), {"mnli": "validation_matched", "mnli_mm": "validation_mismatched"}),
    "qnli": Task("QNLI", ("question", "sentence", "label"), ("entailment", "not_entailment"), {"qnli": "dev.tsv"},
                 ("accuracy",), ("question", "sentence"), {"qnli": "validation"}),
    "rte": Task("RTE", ("sentence1", "sentence2", "label"), ("entailment", "not_entailment"), {"rte": "dev.tsv"},
                ("accuracy",), ("sentence1", "sentence2"), {"rte": "validation"}),
}
OFFLINE = ("rte", "mrpc", "stsb", "cola", "sst2")


@dataclasses.dataclass
class Split:
    """Texts (one or two columns) and labels (int class ids, or float scores for regression)."""

    a: list[str]
    b: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.a[:n], None if self.b is None else self.b[:n], self.labels[:n])


# ----------------------------------------------------------------------------- reading

def _read_tsv(path: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    with files.text_stream(path, "utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r]
    return (rows[0], rows[1:]) if header else (None, rows)


def read_split(task: str, path: Path, pair_ids: set[tuple[str, str]] | None = None,
               exclude: bool = False) -> Split:
    """One GLUE TSV file -> Split. For MRPC's source file, `pair_ids` keeps (or with `exclude`,
    drops) the rows whose (#1 ID, #2 ID) are listed."""
    spec = TASKS[task]
    header, rows = _read_tsv(path, header=task != "cola")
    if header is not None:
        missing = [c for c in spec.columns if c not in header]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {', '.join(missing)}; is this the GLUE {spec.dir} file?")
        cols = [header.index(c) for c in spec.columns]
    else:
        cols = list(spec.columns)
    if pair_ids is not None:
        i1, i2 = header.index("#1 ID"), header.index("#2 ID")
        rows = [r for r in rows if ((r[i1], r[i2]) in pair_ids) != exclude]
    a, b, labels = [], [] if len(cols) == 3 else None, []
    for n, r in enumerate(rows, start=2 if header else 1):
        if len(r) <= max(cols):
            raise ValueError(f"{path}:{n}: {len(r)} fields, expected at least {max(cols) + 1}; fix this row.")
        a.append(r[cols[0]])
        if b is not None:
            b.append(r[cols[1]])
        lab = r[cols[-1]].strip()
        if spec.labels is None:
            labels.append(float(lab))
        elif lab not in spec.labels:
            raise ValueError(f"{path}:{n}: label {lab!r} is not one of {', '.join(spec.labels)}.")
        else:
            labels.append(spec.labels.index(lab))
    dtype = np.float32 if spec.labels is None else np.int32
    return Split(a, b, np.asarray(labels, dtype))


def load_local(task: str, task_dir: Path) -> dict[str, Split]:
    """{'train': Split, <dev key>: Split, ...} from a GLUE task directory; a missing split is an error."""
    spec = TASKS[task]
    out: dict[str, Split] = {}
    train = task_dir / "train.tsv"
    dev_ids = task_dir / "dev_ids.tsv"
    source = task_dir / "msr_paraphrase_train.txt"
    if task == "mrpc" and not train.is_file() and source.is_file() and dev_ids.is_file():
        ids = {tuple(r[:2]) for r in _read_tsv(dev_ids, header=False)[1]}
        out["train"] = read_split(task, source, ids, exclude=True)
    elif train.is_file():
        out["train"] = read_split(task, train)
    else:
        raise FileNotFoundError(f"GLUE directory {task_dir} has no train.tsv; copy the task's train.tsv there "
                                "(the GLUE download script's layout).")
    for key, name in spec.dev.items():
        f = task_dir / name
        if not f.is_file():
            raise FileNotFoundError(f"GLUE directory {task_dir} has no {name}; copy the task's {name} there "
                                    "(the GLUE download script's layout).")
        out[key] = read_split(task, f)
    return out


def load_hub(task: str) -> dict[str, Split] | None:
    """The hub dataset `glue/<task>` through `datasets`, or None when it cannot be reached."""
    spec = TASKS[task]
    try:
        from datasets import load_dataset

        ds = load_dataset("glue", task)
    except Exception as e:  # offline or no such dataset in the cache
        log.debug("glue/%s from the hub: %s", task, e)
        return None

    def split(d) -> Split:
        b = list(d[spec.hub_text[1]]) if len(spec.hub_text) > 1 else None
        dtype = np.float32 if spec.labels is None else np.int32
        return Split(list(d[spec.hub_text[0]]), b, np.asarray(d["label"], dtype))

    return {"train": split(ds["train"]), **{k: split(ds[v]) for k, v in spec.hub_dev.items()}}


# ----------------------------------------------------------------------------- metrics

def metrics(task_metrics: Sequence[str], labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Dev metrics from [n, num_labels] logits (argmax) or [n, 1] regression outputs."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out: dict[str, float] = {}
    if "pearson" in task_metrics:
        pred = logits[:, 0].astype(np.float64)
        out["pearson"] = float(pearsonr(pred, labels)[0])
        out["spearman"] = float(spearmanr(pred, labels)[0])
        return out
    pred = logits.argmax(-1)
    for m in task_metrics:
        if m == "accuracy":
            out[m] = float(accuracy_score(labels, pred))
        elif m == "f1":
            out[m] = float(f1_score(labels, pred))
        elif m == "matthews":
            out[m] = float(matthews_corrcoef(labels, pred))
    return out


def average(results: dict[str, dict[str, float]]) -> float | None:
    """Mean over tasks of each task's mean metric; mnli and mnli_mm together count as one task."""
    scores = {k: float(np.mean(list(v.values()))) for k, v in results.items() if isinstance(v, dict)}
    if "mnli" in scores and "mnli_mm" in scores:
        scores["mnli"] = (scores["mnli"] + scores.pop("mnli_mm")) / 2
    return float(np.mean(list(scores.values()))) if scores else None


# ----------------------------------------------------------------------------- running

def _encode(split: Split, tokenizer: Any, max_length: int) -> ft.Encoded:
    ids, types = ft.encode_texts(tokenizer, split.a, split.b, max_length)
    return ft.Encoded(ids, types, {"labels": split.labels})


def run_task(ctx: Context, task: str, splits: dict[str, Split]) -> dict[str, dict[str, float]]:
    """Fine-tunes on splits['train'] and scores every dev split of `task`."""
    spec = TASKS[task]
    enc = runs.load_encoder(ctx)
    hp, max_length = runs.hparams(ctx, max_length=128)
    train = _encode(splits["train"].head(runs.train_limit(ctx)), enc.tokenizer, max_length)
    devs = {k: splits[k].head(ctx.limit) for k in spec.dev}
    head = SequenceHead(1 if spec.labels is None else len(spec.labels), enc.model_dropout)
    logits = runs.run(ctx, f"glue/{task}", enc, head, train, {k: _encode(v, enc.tokenizer, max_length)
                                                            for k, v in devs.items()}, hp, max_length)
    out = {}
    for key, dev in devs.items():
        out[key] = metrics(spec.metrics, dev.labels, logits[key])
        pred = logits[key][:, 0] if spec.labels is None else logits[key].argmax(-1)
        ctx.record("glue", [{"task": key, "index": i, "label": lab.item(), "prediction": p.item()}
                            for i, (lab, p) in enumerate(zip(dev.labels, pred))])
    return out


def _run(ctx: Context) -> dict[str, Any]:
    glue_dir = Path(ctx.options["glue_dir"]) if ctx.options["glue_dir"] else GLUE_DIR
    results: dict[str, Any] = {}
    for task in ctx.options["glue_tasks"]:
        task_dir = glue_dir / TASKS[task].dir
        splits = load_local(task, task_dir) if task_dir.is_dir() else load_hub(task)
        if splits is None:
            log.warning("GLUE %s skipped: no data; put the GLUE download script's %s/ directory (train.tsv, %s) "
                        "under %s, or go online for the hub dataset glue/%s.", task, TASKS[task].dir,
                        ", ".join(TASKS[task].dev.values()), glue_dir, task)
            continue
        results.update(run_task(ctx, task, splits))
    results["average"] = average(results)
    return {"glue": results}


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    g = results.get("glue")
    if g is None:
        return []
    out = [("GLUE", task, " · ".join(f"{m} {fmt(v, 4)}" for m, v in r.items()))
           for task, r in g.items() if isinstance(r, dict)]
    return out + [("GLUE", "average", fmt(g["average"], 4))]


def _tasks(text: str) -> tuple[str, ...]:
    names = comma_list(text)
    for t in names:
        if t not in TASKS:
            raise ValueError(f"Unknown GLUE task {t!r}; choose from {', '.join(TASKS)}.")
    return names


BENCHMARK = Benchmark(
    name="glue", title="GLUE", kind="finetune", data=(), run=_run, rows=_rows, default=False,
    options=(
        Option("glue_tasks", OFFLINE, f"comma-separated GLUE tasks of {','.join(TASKS)} (default: the five "
               "bundled ones; mnli also scores mnli_mm)", parse=_tasks),
        Option("glue_dir", None, "directory of GLUE task directories (default: the bundled RTE, MRPC, STS-B, "
               "CoLA, SST-2)"),
        *runs.OPTIONS,
    ),
    check=lambda opts: _tasks(",".join(opts["glue_tasks"])),
)
