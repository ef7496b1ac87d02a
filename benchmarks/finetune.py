"""Fine-tuning throughput: ncjax's jitted sequence-classification step vs transformers' PyTorch one.

Both sides run the same work per step, on the same weights and the same inputs: the MiniLM demo
encoder (6 layers, hidden 384) with its pretrained pooler and a 2-class classifier
(BertForSequenceClassification), train mode (dropout 0.1), a batch of B sequences of L tokens
(random ids, no padding), float32, cross-entropy, backward, gradient clipping at 1.0, AdamW
(lr 2e-5, eps 1e-8, no weight decay) with a linear schedule.

- ncjax: `ncjax.bench.finetune.init_training` (the step every fine-tuning benchmark uses), jitted
  over a 1-device mesh, parameters and optimiser state donated.
- reference: `transformers.BertForSequenceClassification` + `torch.optim.AdamW` +
  `get_linear_schedule_with_warmup`, the loop transformers' Trainer runs.

Each side runs in its own process (XLA's and PyTorch's thread pools disturb each other inside
one process on a small CPU); the script alternates the sides for --rounds rounds, each child
doing --warmup untimed steps (the first one compiles: reported separately) and --steps timed ones,
then prints the median step time, the spread (min-max over all timed steps) and the ratio.

    python benchmarks/finetune.py                          # B 32 x L 128, the run_glue defaults
    python benchmarks/finetune.py --batch 16 --length 64   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _batch(batch: int, length: int, vocab: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, (batch, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, rng.integers(0, 2, batch).astype(np.int32)


def child_jax(args) -> dict:
    import jax
    import numpy as np

    from ncjax import parallel
    from ncjax.bench import finetune as ft
    from ncjax.bench.heads import SequenceHead
    from ncjax.convert import load_model, load_pooler

    model, config = load_model("minilm", init_missing_head=True)
    m = ft.split_encoder(model)
    mesh = parallel.make_mesh(1)
    hp = ft.Hparams(batch_size=args.batch, seed=0)
    total = args.warmup + args.steps
    step, params, opt = ft.init_training(m, SequenceHead(2), hp, total, mesh, load_pooler("minilm"))
    ids, labels = _batch(args.batch, args.length, config.vocab_size)
    batch = ft.put_batch({"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids),
                          "weight": np.ones(args.batch, np.float32), "labels": labels}, mesh)
    times, compile_s = [], None
    for s in range(total):
        t = time.perf_counter()
        params, opt, loss = step(params, opt, batch, np.int32(s))
        jax.block_until_ready(loss)
        dt = time.perf_counter() - t
        if s == 0:
            compile_s = dt
        elif s >= args.warmup:
            times.append(dt)
    return {"times": times, "first_step_s": compile_s, "loss": float(loss), "version": jax.__version__}


def child_torch(args) -> dict:
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

    from ncjax.weights import minilm_dir

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2).train()
    total = args.warmup + args.steps
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, 0, total)
    ids, labels = _batch(args.batch, args.length, model.config.vocab_size)
    inputs = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.ones(ids.shape, dtype=torch.long),
              "token_type_ids": torch.zeros(ids.shape, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}
    times, first = [], None
    for s in range(total):
        t = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        if s == 0:
            first = dt
        elif s >= args.warmup:
            times.append(dt)
    return {"times": times, "first_step_s": first, "loss": float(loss), "version": torch.__version__,
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step compiles)")
    if args.side:
        out = child_jax(args) if args.side == "jax" else child_torch(args)
        print("RESULT " + json.dumps(out))
        return

    import numpy as np

    runs: dict[str, list[dict]] = {"jax": [], "torch": []}
    for r in range(args.rounds):
        for side in ("torch", "jax"):
            cmd = [sys.executable, __file__, "--side", side, "--batch", str(args.batch), "--length", str(args.length),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
            if res.returncode or not line:
                sys.exit(f"{side} child failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
            runs[side].append(json.loads(line[0][len("RESULT "):]))
            print(f"round {r + 1} {side}: median {np.median(runs[side][-1]['times']):.3f} s/step", flush=True)

    def summary(side: str) -> tuple[float, float, float, float]:
        t = np.concatenate([x["times"] for x in runs[side]])
        return float(np.median(t)), float(t.min()), float(t.max()), float(np.median([x["first_step_s"] for x in runs[side]]))

    import transformers

    j, t = summary("jax"), summary("torch")
    print(f"# fine-tune step, MiniLM-L6 (hidden 384) + pooler + 2-class head, batch {args.batch} x {args.length}, "
          f"float32, dropout on, AdamW")
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} {platform.processor() or ''}, "
          f"jax {runs['jax'][0]['version']}, torch {runs['torch'][0]['version']} ({runs['torch'][0]['threads']} threads), "
          f"transformers {transformers.__version__}, Python {platform.python_version()}; each side in its own process, "
          f"{args.rounds} alternating rounds x {args.steps} timed steps")
    print("| side | median s/step | min-max | sequences/s | first step (compile) s |")
    print("|---|---|---|---|---|")
    for name, (med, lo, hi, first) in (("ncjax (jax.jit)", j), ("transformers (PyTorch)", t)):
        print(f"| {name} | {med:.3f} | {lo:.3f}-{hi:.3f} | {args.batch / med:.1f} | {first:.1f} |")
    print(f"ratio (PyTorch / ncjax step time): {t[0] / j[0]:.2f}x")


if __name__ == "__main__":
    main()
