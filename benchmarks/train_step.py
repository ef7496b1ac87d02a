"""Train steps side by side: ncjax's jitted steps vs PyTorch reference steps, same shapes, one run.

Sides (each in its own process, so XLA's and PyTorch's thread pools never share one; the parent
drives them in alternating rounds and times every step):

  torch        the PyTorch reference of the paper's BEC + NC3 step: transformers
               `BertForMaskedLM` in train mode with logits at every position and the MLM loss on
               the masked ones (15 %, 80/10/10 on the host), then the released NC3 algorithm (last
               layer paired with the next input token, tokens x vocabulary one-hot class totals,
               unbiased std of cos(W[c], mu_c - mu_G) over the gender ids present), loss = MLM +
               100 * NC3, backward, clipping 1.0, AdamW (lr 2e-5, eps 1e-8, no weight decay),
               linear schedule.
  ncjax        `ncjax.step.make_train_step` with the configs/bert_nc3.py terms (MLM + 100 * NC3):
               masks on device, logits at the masked positions only, NC3 `reference` mode over K
               class slots, one jitted step with the state donated.
  ncjax_mlm    the same with the MLM term only (what the penalty costs).
  baseline     (with --baseline REF) the MLM + NC3 step of `git show REF:ncjax/step.py`, the step
               before it became a sum of loss terms: the same work, to show the seam costs nothing.
  mabel_torch  a PyTorch re-implementation of the released Mabel + NC3 step on batch x 4 views:
               the four views unmasked through `BertModel` with MABEL's MLPLayer on [CLS], InfoNCE
               (cos / 0.05) + 0.05 * alignment, the MLM loss on a separate masked forward of all
               4B sequences with an untied decoder (15 %, 80/10/10 on the host), the released NC3
               on that forward with the decoder's rows, loss = InfoNCE + 0.05 align + 0.1 MLM +
               10 * NC3, backward, clipping 1.0, AdamW (lr 5e-5, eps 1e-8), linear schedule.
  mabel_ncjax  `ncjax.step.make_train_step` with the configs/mabel_nc3.py terms on the same views.

All sides use the same random bert-base-shaped weights (12 layers, hidden 768, vocab 30522),
the same batch, and the 271 GN-GloVe first-piece gender ids of the bert-base-uncased vocabulary.

    python benchmarks/train_step.py --baseline main           # bert-base, batch 16 x 128
    python benchmarks/train_step.py --layers 2 --rounds 2 --steps-per-round 2   # smoke run
    python benchmarks/train_step.py --sides mabel_torch,mabel_ncjax --batch 4 --length 64   # Mabel
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDES = ("torch", "ncjax", "ncjax_mlm", "baseline", "mabel_torch", "mabel_ncjax")
MABEL_SIDES = ("mabel_torch", "mabel_ncjax")
TOTAL_STEPS = 2465  # the paper recipe: 3 epochs of GAP-flipped at batch 16 (sets the lr schedule)


# ----------------------------------------------------------------------------- shared inputs


def _inputs(args, views: int = 0):
    """(BertConfig, model, graphdef, host params, gender ids, tokenizer, host batch), equal in
    every worker. views > 0: a Mabel batch [batch, views, length] and a model with an untied
    decoder (a copy of the word embeddings)."""
    import jax
    import numpy as np
    from flax import nnx

    from ncjax import convert, words
    from ncjax.model import BertConfig, BertForMaskedLM

    tokenizer = convert.load_tokenizer(convert.minilm_dir())  # the bert-base-uncased vocabulary
    class_ids = np.asarray(words.resolve(words.bundled("gender-gnglove"), tokenizer, "first_piece").ids, np.int32)
    cfg = BertConfig(num_hidden_layers=args.layers)
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(0), untie_decoder=views > 0)
    graphdef, state = nnx.split(model)
    params = jax.device_get(nnx.to_pure_dict(state))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, (args.batch * max(views, 1), args.length)).astype(np.int32)
    # every sequence carries gender words so the penalty has classes from the first step
    ids[:, 1:-1:7] = rng.choice(class_ids, size=ids[:, 1:-1:7].shape)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    if views:
        ids = ids.reshape(args.batch, views, args.length)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return cfg, model, graphdef, params, class_ids, tokenizer, batch


def _recipe(mabel: bool = False):
    from configs import bert_nc3, mabel_nc3

    return mabel_nc3.get_config() if mabel else bert_nc3.get_config()


# ----------------------------------------------------------------------------- sides


def _ncjax_side(args, alpha: float, baseline_ref: str | None = None, mabel: bool = False):
    """A closure running one ncjax step (blocking) and returning its metrics."""
    import importlib.util

    import jax

    from ncjax import masking, parallel
    from ncjax import step as step_lib
    from ncjax import terms as terms_lib

    cfg, _, graphdef, params, class_ids, tokenizer, batch = _inputs(args, views=4 if mabel else 0)
    config = _recipe(mabel)
    config.penalty.alpha = alpha
    mesh = parallel.make_mesh(1)
    schedule = step_lib.make_schedule(config.optim, TOTAL_STEPS)
    tx = step_lib.make_optimizer(config.optim, schedule)
    if baseline_ref:
        source = subprocess.run(["git", "show", f"{baseline_ref}:ncjax/step.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location("ncjax_step_baseline", f.name)
        old = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = old  # dataclasses look their module up while the file executes
        spec.loader.exec_module(old)
        mask_spec = old.MaskSpec(tuple(masking.special_token_ids(tokenizer)), tokenizer.mask_token_id,
                                 cfg.vocab_size, 0.15, masking.default_max_predictions(args.length, 0.15))
        step_fn = old.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=42, masking=mask_spec,
                                      penalty_spec=old.PenaltySpec.from_config(config.penalty),
                                      class_ids=class_ids, dropout=True)
        state = old.init_state(params, tx, mesh, (len(class_ids), cfg.hidden_size))
    else:
        setup = terms_lib.Setup(config=config, tokenizer=tokenizer, model_config=cfg, length=args.length,
                                fields=tuple(batch), workdir=Path(tempfile.mkdtemp()), is_main=False)
        loss_terms = terms_lib.build(config, setup)
        step_fn = step_lib.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=42, terms=loss_terms)
        state = step_lib.init_state(params, tx, mesh, loss_terms, seed=42)
    global_batch = parallel.global_batch(batch, mesh)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step_fn(holder["state"], global_batch)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def cost():
        """XLA's cost analysis of the compiled step (flops, bytes accessed): load-independent."""
        analysis = step_fn.lower(holder["state"], global_batch).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        return {k: float(analysis.get(k, float("nan"))) for k in ("flops", "bytes accessed")}

    run.cost = cost
    return run


def _torch_masking(ids, mask, special, mask_id: int, vocab: int):
    """The reference's host-side dynamic masking (15 %, 80/10/10) -> (inputs, labels)."""
    import torch

    inputs, labels = ids.clone(), ids.clone()
    prob = torch.full(labels.shape, 0.15)
    prob[torch.isin(labels, special) | (mask == 0)] = 0.0
    chosen = torch.bernoulli(prob).bool()
    labels[~chosen] = -100
    replace = torch.bernoulli(torch.full(labels.shape, 0.8)).bool() & chosen
    inputs[replace] = mask_id
    rand = torch.bernoulli(torch.full(labels.shape, 0.5)).bool() & chosen & ~replace
    inputs[rand] = torch.randint(vocab, labels.shape)[rand]
    return inputs, labels


def _torch_nc3(hidden, inputs, mask, counts, totals, gender, decoder, eps: float):
    """The released NC3: last layer at t paired with input id t + 1, full-vocabulary one-hot
    totals accumulated in `counts`/`totals`, unbiased std of cos(W[c], mu_c - mu_G)."""
    import torch

    vocab = counts.shape[0]
    h = hidden.detach() * mask[..., None]
    keep = mask[:, 1:].bool()
    x, y = h[:, :-1][keep], inputs[:, 1:][keep]
    onehot = torch.nn.functional.one_hot(y, vocab).float()  # tokens x vocabulary
    counts.add_(onehot.sum(0))
    totals.add_(onehot.T @ x)
    have = gender[counts[gender] > 0]
    means = totals[have] / (counts[have][:, None] + eps)
    centred = means - means.mean(0)
    w = decoder[have]
    sims = torch.sum(centred / (centred.norm(dim=1, keepdim=True) + eps) * (w / (w.norm(dim=1, keepdim=True) + eps)), 1)
    return sims.std()


def _torch_setup(args, views: int, lr: float):
    """(transformers BertForMaskedLM with the ncjax weights, extra modules, ids, mask, special ids,
    gender ids, NC3 counts and totals, optimizer, scheduler, tokenizer) for one torch side."""
    import numpy as np
    import torch
    import transformers

    from ncjax import convert, masking

    cfg, model, _, _, class_ids, tokenizer, batch = _inputs(args, views)
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
    torch_model = transformers.BertForMaskedLM(hf_cfg)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in convert.params_to_hf(model).items()}
    torch_model.load_state_dict(sd, strict=False)
    torch_model.tie_weights()
    extra = torch.nn.ModuleDict()
    if views:
        # MABEL's lm_head: a decoder of its own, initialised from the tied one
        decoder = torch.nn.Parameter(torch_model.cls.predictions.decoder.weight.detach().clone())
        torch_model.cls.predictions.decoder.weight = decoder
        extra["dense1"] = torch.nn.Linear(cfg.hidden_size, cfg.hidden_size)
        extra["dense2"] = torch.nn.Linear(cfg.hidden_size, cfg.hidden_size)
    vocab = torch_model.config.vocab_size
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64).reshape(-1, args.length))
    mask = torch.from_numpy(batch["attention_mask"].astype(np.int64).reshape(-1, args.length))
    special = torch.tensor(sorted(set(masking.special_token_ids(tokenizer))))
    gender = torch.tensor(class_ids.astype(np.int64))
    counts = torch.zeros(vocab)
    totals = torch.zeros(vocab, torch_model.config.hidden_size)
    parameters = list(torch_model.parameters()) + list(extra.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (TOTAL_STEPS - s) / TOTAL_STEPS))
    torch_model.train()
    extra.train()
    return torch_model, extra, parameters, ids, mask, special, gender, counts, totals, optimizer, scheduler, tokenizer


def _torch_side(args, alpha: float = 100.0):
    import numpy as np
    import torch

    (torch_model, _, parameters, ids, mask, special, gender, counts, totals, optimizer, scheduler,
     tokenizer) = _torch_setup(args, 0, 2e-5)
    vocab = torch_model.config.vocab_size
    eps = float(np.finfo(np.float32).eps)

    def run():
        inputs, labels = _torch_masking(ids, mask, special, tokenizer.mask_token_id, vocab)
        optimizer.zero_grad(set_to_none=True)
        out = torch_model(input_ids=inputs, attention_mask=mask, labels=labels, output_hidden_states=True)
        nc3 = _torch_nc3(out.hidden_states[-1], inputs, mask, counts, totals, gender,
                         torch_model.cls.predictions.decoder.weight, eps)
        loss = out.loss + alpha * nc3
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        return {"loss": float(loss.detach()), "loss/mlm": float(out.loss.detach()), "loss/nc3": float(nc3.detach())}

    return run


def _mabel_torch_side(args):
    """The released Mabel + NC3 step (module docstring), 4 views per example."""
    import numpy as np
    import torch

    (torch_model, head, parameters, ids, mask, special, gender, counts, totals, optimizer, scheduler,
     tokenizer) = _torch_setup(args, 4, 5e-5)
    vocab = torch_model.config.vocab_size
    eps = float(np.finfo(np.float32).eps)
    cos = torch.nn.CosineSimilarity(dim=-1)
    sim = lambda x, y: cos(x.unsqueeze(1), y.unsqueeze(0)) / 0.05  # noqa: E731

    def run():
        optimizer.zero_grad(set_to_none=True)
        cls = torch_model.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        z = head["dense2"](torch.tanh(head["dense1"](cls))).view(args.batch, 4, -1)
        op, oh, ap, ah = z[:, 0], z[:, 1], z[:, 2], z[:, 3]
        s = sim(torch.cat((op, ap)), torch.cat((oh, ah)))
        c_loss = torch.nn.functional.cross_entropy(s, torch.arange(s.size(0)))
        a_loss = (sim(op, oh) - sim(ap, ah)).norm(p=2, dim=1).pow(2).mean()
        inputs, labels = _torch_masking(ids, mask, special, tokenizer.mask_token_id, vocab)
        out = torch_model(input_ids=inputs, attention_mask=mask, labels=labels, output_hidden_states=True)
        nc3 = _torch_nc3(out.hidden_states[-1], inputs, mask, counts, totals, gender,
                         torch_model.cls.predictions.decoder.weight, eps)
        loss = c_loss + 0.05 * a_loss + 0.1 * out.loss + 10.0 * nc3
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        return {"loss": float(loss.detach()), "loss/contrastive": float(c_loss.detach()),
                "loss/alignment": float(a_loss.detach()), "loss/mlm": float(out.loss.detach()),
                "loss/nc3": float(nc3.detach())}

    return run


def _make_side(name: str, args):
    if name == "torch":
        return _torch_side(args)
    if name == "ncjax":
        return _ncjax_side(args, 100.0)
    if name == "ncjax_mlm":
        return _ncjax_side(args, 0.0)
    if name == "baseline":
        return _ncjax_side(args, 100.0, baseline_ref=args.baseline)
    if name == "mabel_torch":
        return _mabel_torch_side(args)
    if name == "mabel_ncjax":
        return _ncjax_side(args, 10.0, mabel=True)
    raise ValueError(f"unknown side {name!r}")


def worker(name: str, args) -> None:
    """Builds one side, runs its first step (compilation for ncjax) and reports its time, then
    answers each line 'N' on stdin with the seconds of N more steps and the last metrics."""
    t = time.perf_counter()
    run = _make_side(name, args)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    print(json.dumps({"setup_s": setup_s, "first_step_s": first}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        times, metrics = [], {}
        for _ in range(int(line)):
            t = time.perf_counter()
            metrics = run()
            times.append(time.perf_counter() - t)
        print(json.dumps({"times": times, "metrics": metrics}), flush=True)


# ----------------------------------------------------------------------------- driver


def _median_spread(xs):
    import numpy as np

    a = np.asarray(xs)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75)), float(a.min()), float(a.max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds over the sides")
    p.add_argument("--steps-per-round", type=int, default=2, help="timed steps per side per round")
    p.add_argument("--baseline", default="", help="git ref whose ncjax/step.py is timed as the 'baseline' side")
    p.add_argument("--sides", default="", help="comma-separated subset of " + ",".join(SIDES))
    p.add_argument("--cost", action="store_true",
                   help="print XLA's cost analysis of the ncjax steps (and the baseline's) instead of timing")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args)
        return
    if args.cost:
        for name in [s for s in ("ncjax", "ncjax_mlm", "baseline") if s != "baseline" or args.baseline]:
            c = _make_side(name, args).cost()
            print(f"{name}: {c['flops']:.6g} flops, {c['bytes accessed']:.6g} bytes accessed per step")
        return

    default = [s for s in SIDES if s not in MABEL_SIDES]
    sides = [s for s in (args.sides.split(",") if args.sides else default) if s != "baseline" or args.baseline]
    passthrough = ["--batch", str(args.batch), "--length", str(args.length), "--layers", str(args.layers),
                   "--baseline", args.baseline]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs, start = {}, {}
    t0 = time.perf_counter()
    for name in sides:  # one at a time, so every compile time is measured on an otherwise idle side set
        proc = subprocess.Popen([sys.executable, __file__, "--worker", name, *passthrough], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        start[name] = json.loads(proc.stdout.readline())
        procs[name] = proc
    times = {n: [] for n in sides}
    last = {}
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for name in order:
            procs[name].stdin.write(f"{args.steps_per_round}\n")
            procs[name].stdin.flush()
            reply = json.loads(procs[name].stdout.readline())
            times[name] += reply["times"]
            last[name] = reply["metrics"]
    for proc in procs.values():
        proc.stdin.write("quit\n")
        proc.stdin.close()
        proc.wait()

    import jax
    import torch
    import transformers

    tokens = args.batch * args.length  # x 4 views on the Mabel sides
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"versions: jax {jax.__version__}, flax {__import__('flax').__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, Python {platform.python_version()}")
    print(f"shape: layers={args.layers} hidden=768 vocab=30522 batch={args.batch}x{args.length} "
          f"{'(x 4 views on the Mabel sides) ' if set(sides) & set(MABEL_SIDES) else ''}float32, dropout 0.1; "
          f"{args.rounds} rounds x {args.steps_per_round} timed steps per side, each side in its own process; "
          f"whole run {time.perf_counter() - t0:.0f} s")
    for name in sides:
        m = last[name]
        print(f"last step {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith("loss")))
    ref = _median_spread(times["torch"])[0] if "torch" in times else None
    mabel_ref = _median_spread(times["mabel_torch"])[0] if "mabel_torch" in times else None
    print("| side | first step (s, incl. compile) | median s/step | IQR | min-max | tokens/s | vs its torch side |")
    print("|---|---|---|---|---|---|---|")
    for name in sides:
        med, q1, q3, lo, hi = _median_spread(times[name])
        base = mabel_ref if name in MABEL_SIDES else ref
        ratio = f"{base / med:.2f}x" if base else "-"
        n_tokens = tokens * (4 if name in MABEL_SIDES else 1)
        print(f"| {name} | {start[name]['first_step_s']:.1f} | {med:.3f} | {q1:.3f}-{q3:.3f} | {lo:.3f}-{hi:.3f} | "
              f"{n_tokens / med:,.0f} | {ratio} |")
    if "ncjax" in times and "baseline" in times:
        new, old = _median_spread(times["ncjax"])[0], _median_spread(times["baseline"])[0]
        print(f"loss-term step vs {args.baseline}'s step (MLM + NC3): {100 * (new / old - 1):+.1f} % time per step")
    if "ncjax" in times and "ncjax_mlm" in times:
        new, mlm_only = _median_spread(times["ncjax"])[0], _median_spread(times["ncjax_mlm"])[0]
        print(f"NC3 overhead in ncjax: {100 * (new / mlm_only - 1):+.1f} % of the MLM-only step")


if __name__ == "__main__":
    main()
