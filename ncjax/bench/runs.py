"""Fine-tuning runs of a benchmark: the encoder under test, task settings, run directories.

`run` is what GLUE, coreference and Bias-in-Bios call: it loads nothing twice (the encoder is
cached on the suite context), fine-tunes through `finetune.finetune`, scores the eval sets with
`finetune.predict` (after every epoch when a benchmark selects an epoch), and keeps everything in
<workdir>/<benchmark>/ so an interrupted evaluation resumes and a finished one is read back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ncjax import files, parallel
from ncjax.bench.finetune import Encoded, Hparams, Model, check_run_dir, finetune, predict, split_encoder
from ncjax.bench.registry import Context, Option, positive_float, positive_int
from ncjax.logs import write_json_atomic

log = logging.getLogger(__name__)


OPTIONS = (
    Option("ft_learning_rate", None, "fine-tuning peak learning rate (default: the task's, 2e-5)", parse=positive_float),
    Option("ft_batch_size", None, "fine-tuning batch size (default: the task's, 32)", parse=positive_int),
    Option("ft_epochs", None, "fine-tuning epochs (default: the task's, 3)", parse=positive_float),
    Option("ft_max_length", None, "fine-tuning max sequence length (default: the task's, 128 for GLUE)",
           parse=positive_int),
    Option("ft_train_limit", None, "fine-tune on the first N training examples only (a reduced schedule)",
           parse=positive_int),
)


@dataclasses.dataclass
class Encoder:
    """The encoder under test, loaded once per evaluation: split model, tokenizer, pretrained pooler."""

    model: Model
    tokenizer: Any
    pooler: dict[str, np.ndarray] | None
    model_dropout: float
    source: str
    max_positions: int


def load_encoder(ctx: Context) -> Encoder:
    """The model at ctx.model_source as an Encoder (cached on ctx). Its MLM head, if any, is
    unused; a checkpoint without one loads too (a placeholder head is built and never read)."""
    if "encoder" not in ctx.cache:
        from ncjax.convert import load_model, load_pooler, load_tokenizer

        model, config = load_model(ctx.model_source, init_missing_head=True, seed=ctx.options["seed"])
        pooler = load_pooler(ctx.model_source)
        if pooler is None:
            log.info("%s has no pretrained pooler; sequence heads start from a freshly initialised one "
                     "(as transformers does).", ctx.model_source)
        ctx.cache["encoder"] = Encoder(split_encoder(model), load_tokenizer(ctx.model_source), pooler,
                                       config.hidden_dropout_prob, ctx.model_source, config.max_position_embeddings)
    return ctx.cache["encoder"]


def hparams(ctx: Context, max_length: int, **task_defaults: Any) -> tuple[Hparams, int]:
    """Hparams from the task's defaults overridden by the ft_* options and the suite seed; the
    max length is capped at the encoder's position embeddings."""
    o = ctx.options
    max_length = min(o["ft_max_length"] or max_length, load_encoder(ctx).max_positions)
    base = Hparams(seed=o["seed"], **task_defaults)
    hp = dataclasses.replace(
        base,
        learning_rate=o["ft_learning_rate"] if o["ft_learning_rate"] is not None else base.learning_rate,
        batch_size=o["ft_batch_size"] or base.batch_size,
        epochs=o["ft_epochs"] if o["ft_epochs"] is not None else base.epochs,
    )
    return hp, max_length


def train_limit(ctx: Context) -> int | None:
    """How many training examples to use: the smaller of --limit and ft_train_limit (None: all)."""
    given = [n for n in (ctx.limit, ctx.options["ft_train_limit"]) if n is not None]
    return min(given) if given else None


def _digest(data: Encoded) -> str:
    h = hashlib.sha256()
    for x in data.ids:
        h.update(x.tobytes())
    for k in sorted(data.fields):
        h.update(k.encode())
        h.update(np.ascontiguousarray(data.fields[k]).tobytes())
    return h.hexdigest()[:16]


def run(
    ctx: Context,
    name: str,
    enc: Encoder,
    head: Any,
    train: Encoded,
    evals: dict[str, Encoded],
    hp: Hparams,
    max_length: int,
    *,
    every_epoch: bool = False,
) -> Any:
    """Fine-tunes on `train` and returns {key: logits} for each eval set (every_epoch: a list of
    those, one per epoch, for model selection). With ctx.workdir the run lives in
    <workdir>/<name>/ (resumed when interrupted; read back when finished)."""
    run_dir = ctx.workdir / name if ctx.workdir is not None else None
    spec = {"model": enc.source, "benchmark": name, "train": [len(train), _digest(train)],
            "evals": {k: [len(v), _digest(v)] for k, v in evals.items()}, "head": repr(head),
            "every_epoch": every_epoch}
    mesh = parallel.make_mesh()
    epochs: dict[int, dict[str, np.ndarray]] = {}

    def evaluate(epoch: int, params: Any) -> None:
        f = run_dir / f"epoch{epoch}.npz" if run_dir is not None else None
        if f is not None and f.is_file():
            with np.load(f) as z:
                epochs[epoch] = {k: z[k] for k in evals}
            return
        epochs[epoch] = {k: predict(enc.model, head, params, v, max_length=max_length,
                                    batch_size=hp.eval_batch_size, mesh=mesh) for k, v in evals.items()}
        if f is not None:
            _save_npz(f, epochs[epoch])

    done = run_dir / "done.json" if run_dir is not None else None
    if done is not None and done.is_file():
        check_run_dir(run_dir, {**spec, "hparams": dataclasses.asdict(hp), "max_length": max_length})
        n = json.loads(done.read_text())["epochs"]
        for e in range(1, n + 1):
            evaluate(e, None)
        log.info("%s: finished run read back from %s", name, run_dir)
    else:
        if run_dir is not None:  # epochs scored before an interruption are read back, not redone
            for f in run_dir.glob("epoch*.npz"):
                evaluate(int(f.stem[len("epoch"):]), None)
        on_epoch = (lambda e, p: e in epochs or evaluate(e, p)) if every_epoch else None
        params, _ = finetune(enc.model, head, train, hp, max_length=max_length, mesh=mesh, run_dir=run_dir,
                             spec=spec, progress=ctx.progress is not None and not getattr(ctx.progress, "disable", True),
                             desc=name, pooler=enc.pooler, on_epoch=on_epoch)
        if not every_epoch:
            evaluate(1, params)  # (stored as epoch 1: the final parameters)
        if done is not None:
            write_json_atomic(done, {"epochs": max(epochs)})
    ordered = [epochs[e] for e in sorted(epochs)]
    return ordered if every_epoch else ordered[-1]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    files.write_bytes_with(path, lambda tmp: np.savez(tmp, **arrays))
