"""NC3 statistics update and penalty overhead: ncjax vs the released full-vocabulary one-hot.

At the bert-base shape (batch 32 x 128 tokens, hidden 768, vocabulary 30522, 287 classes, the
ADEPT first_piece set's size), on the same inputs in one process:

1. Statistics update (counts and class sums of the last layer, per batch, over --updates batches
   run back to back, as inside a train step):
   - ncjax: `penalty.class_sums` (vocab -> slot table, one-hot over the 287 slots, einsum),
     jitted, float32 with HIGHEST precision;
   - reference (PyTorch): the released code's update, a tokens x vocabulary boolean one-hot and
     `onehot.T @ X` into [30522, 768] totals;
   - the same full-vocabulary one-hot in JAX, to separate the algorithm from the framework.
2. Penalty overhead in a jitted MLM train step (bert-base, random init, AdamW, logits at 20
   masked positions per sequence): step time with MLM loss alone vs MLM loss + alpha * R,
   alternating the two in rounds
   (`nc3_penalty`, reference mode, next-token pairing).

    python benchmarks/penalty.py --torch-device cuda      # on a GPU (about a minute on an H100)
    python benchmarks/penalty.py                          # on a CPU: 2-layer step (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from ncjax import penalty  # noqa: E402
from ncjax.model import BertConfig, BertForMaskedLM  # noqa: E402


def timeit(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-up calls; fn must block until done."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def make_batch(rng, batch, length, vocab, class_ids):
    """Token ids where ~5 % of tokens are class ids, right padding on a quarter of the rows."""
    ids = rng.integers(1000, vocab, size=(batch, length))
    hit = rng.random((batch, length)) < 0.05
    ids[hit] = rng.choice(class_ids, size=int(hit.sum()))
    mask = np.ones((batch, length), np.int32)
    for b in range(0, batch, 4):
        mask[b, length // 2:] = 0
    ids[:, 0] = 101
    return ids.astype(np.int32), mask


def bench_stats(args, rng, class_ids):
    """Seconds per statistics update, each side running `args.updates` updates back to back
    (inside one jitted scan for JAX, as in a train step; launched back to back for PyTorch),
    plus the latency of one standalone jitted ncjax update call."""
    import torch

    b, n, h, v, k, u = args.batch, args.length, args.hidden, args.vocab, len(class_ids), args.updates
    ids, mask = make_batch(rng, b, n, v, class_ids)
    feats = rng.normal(size=(u, b, n, h)).astype(np.float32)
    table = penalty.make_slot_table(class_ids, v)
    lab, w = penalty.penalty_targets(ids, mask, label_shift=1)
    xs = jnp.asarray(feats)

    def ours_update(state, x):
        sums, counts = penalty.class_sums(x, lab, w, table, k)
        return {"sums": state["sums"] + sums, "counts": state["counts"] + counts}, None

    def full_update(carry, x):
        totals, counts = carry
        y = lab.reshape(-1)
        onehot = (y[:, None] == jnp.arange(v)[None, :]) & (w.reshape(-1)[:, None] > 0)
        xm = (x * w[..., None]).reshape(-1, h)
        return (totals + jnp.dot(onehot.T.astype(jnp.float32), xm, precision="highest"), counts + onehot.sum(0)), None

    ours = jax.jit(lambda st, xs: jax.lax.scan(ours_update, st, xs)[0])
    full = jax.jit(lambda c, xs: jax.lax.scan(full_update, c, xs)[0])
    one = jax.jit(lambda st, x: ours_update(st, x)[0])
    state = penalty.init_state(k, h)
    t_ours = timeit(lambda: jax.block_until_ready(ours(state, xs)), args.repeats) / u
    t_one = timeit(lambda: jax.block_until_ready(one(state, xs[0])), args.repeats)
    carry = (jnp.zeros((v, h)), jnp.zeros((v,), jnp.int32))
    t_full_jax = timeit(lambda: jax.block_until_ready(full(carry, xs)), args.repeats) / u

    dev = torch.device(args.torch_device)
    tx = torch.from_numpy(feats).to(dev)
    tmask = torch.from_numpy(mask).to(dev)
    tids = torch.from_numpy(ids.astype(np.int64)).to(dev)
    t_tot = torch.zeros(v, h, device=dev)
    t_cnt = torch.zeros(v, dtype=torch.int32, device=dev)
    label_range = torch.arange(v, device=dev)

    def reference():
        # the released collect_means after process_batch: next-token pairing, masked selection,
        # a tokens x vocabulary one-hot, totals += onehot.T @ X
        for i in range(u):
            xm = (tmask.unsqueeze(-1) * tx[i])[:, :-1]
            y = tids[:, 1:]
            sel = tmask[:, 1:].bool()
            xsel, ysel = xm[sel], y[sel]
            idxs = ysel[:, None] == label_range
            t_cnt.add_(idxs.sum(0, dtype=torch.int32))
            t_tot.add_(idxs.T.to(torch.float32) @ xsel)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        t_ref = timeit(reference, args.repeats) / u
    return t_ours, t_one, t_full_jax, t_ref


def bench_step(args, rng, class_ids):
    cfg = BertConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
    )
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(0), dtype=dtype)
    graphdef, params = nnx.split(model)
    opt = optax.adamw(1e-4)
    opt_state = opt.init(params)
    k, p = len(class_ids), args.predictions
    table = penalty.make_slot_table(class_ids, args.vocab)
    g_ids = jnp.asarray(class_ids)
    ids, mask = make_batch(rng, args.batch, args.length, args.vocab, class_ids)
    positions = np.sort(rng.choice(np.arange(1, args.length // 2), size=(args.batch, p)), axis=1).astype(np.int32)
    mlm_labels = np.take_along_axis(ids, positions, axis=1)
    batch = tuple(jnp.asarray(a) for a in (ids, mask, positions, mlm_labels))

    def make_step(with_penalty):
        def loss_fn(params, pen_state, batch):
            ids, mask, positions, mlm_labels = batch
            m = nnx.merge(graphdef, params)
            out = m(ids, mask, None, positions=positions)
            loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, mlm_labels).mean()
            if with_penalty:
                lab, w = penalty.penalty_targets(ids, mask, label_shift=1)
                r, pen_state, _ = penalty.nc3_penalty(
                    pen_state, out.last_hidden, lab, w, m.word_embeddings()[g_ids], table, mode="reference"
                )
                loss = loss + 0.5 * r
            return loss, pen_state

        @jax.jit
        def step(params, opt_state, pen_state, batch):
            (loss, pen_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, pen_state, batch)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, pen_state, loss

        return step

    pen_state = penalty.init_state(k, args.hidden)
    steps = {name: make_step(flag) for name, flag in (("mlm", False), ("mlm+nc3", True))}
    for step in steps.values():  # compile and warm up
        jax.block_until_ready(step(params, opt_state, pen_state, batch))
    # Interleaved rounds: step time drifts by several % between minutes on a GPU, more than the
    # penalty costs; alternating the two variants cancels the drift.
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps_per_round):
                out = step(params, opt_state, pen_state, batch)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t) / args.steps_per_round)
    return float(np.median(times["mlm"])), float(np.median(times["mlm+nc3"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--classes", type=int, default=287)
    p.add_argument("--layers", type=int, default=None,
                   help="encoder layers of the MLM step model (default: 12; 2 on a CPU, where 12 take minutes)")
    p.add_argument("--updates", type=int, default=None, help="statistics updates per timed call (default: 20; 2 on a CPU)")
    p.add_argument("--steps-per-round", type=int, default=None, help="MLM steps per timed round (default: 5; 1 on a CPU)")
    p.add_argument("--predictions", type=int, default=20, help="masked positions per sequence")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="MLM step compute dtype")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls (statistics) / alternating rounds (step) (default: 10; 3 on a CPU)")
    p.add_argument("--skip-step", action="store_true", help="only the statistics update")
    p.add_argument("--torch-device", default="cpu", help="cpu or cuda (the PyTorch reference)")
    args = p.parse_args()
    # On a CPU the full-vocabulary reference and a 12-layer step take minutes: smaller defaults.
    cpu = jax.default_backend() == "cpu"
    args.layers = args.layers or (2 if cpu else 12)
    args.updates = args.updates or (2 if cpu else 20)
    args.repeats = args.repeats or (3 if cpu else 10)
    args.steps_per_round = args.steps_per_round or (1 if cpu else 5)

    import torch

    rng = np.random.default_rng(0)
    class_ids = np.sort(rng.choice(np.arange(1000, args.vocab), size=args.classes, replace=False))
    print(f"date {datetime.date.today()}, {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"torch {torch.__version__} on {args.torch_device}")
    print(f"shape: batch {args.batch} x {args.length}, hidden {args.hidden}, vocab {args.vocab}, "
          f"{args.classes} classes; medians of {args.repeats} timed calls / rounds")

    t_ours, t_one, t_full_jax, t_ref = bench_stats(args, rng, class_ids)
    print(f"\nstatistics update, per batch ({args.updates} updates back to back)")
    print(f"  ncjax slot one-hot      {t_ours * 1e3:10.3f} ms   (one standalone jitted call: {t_one * 1e3:.3f} ms)")
    print(f"  full one-hot, JAX       {t_full_jax * 1e3:10.3f} ms   ratio {t_full_jax / t_ours:8.1f}x")
    print(f"  reference, PyTorch      {t_ref * 1e3:10.3f} ms   ratio {t_ref / t_ours:8.1f}x  (goal >= 50x)")

    if not args.skip_step:
        t_mlm, t_nc3 = bench_step(args, rng, class_ids)
        print(f"\njitted MLM train step ({args.layers} layers, {args.dtype}, {args.predictions} masked positions/seq, "
              f"{args.steps_per_round} steps x {args.repeats} alternating rounds)")
        print(f"  MLM loss                {t_mlm * 1e3:10.2f} ms")
        print(f"  MLM loss + NC3 penalty  {t_nc3 * 1e3:10.2f} ms   overhead {100 * (t_nc3 / t_mlm - 1):+.2f} %  "
              "(goal <= 2 %)")


if __name__ == "__main__":
    main()
