"""One MLM + NC3 train step: ncjax's jitted step vs PyTorch, two comparisons in one run.

Paper reference (what the paper's released BEC + NC3 code does per step): transformers
`BertForMaskedLM` in train mode (dropout on) with logits at every position and the MLM loss on
the masked ones (15 %, 80/10/10 masking on the host), then the released NC3 algorithm: the last
encoder layer paired with the next input token, class statistics accumulated with a
tokens x vocabulary one-hot (`one_hot(Y, V).T @ X`), the unbiased std of cos(W[c], mu_c - mu_G)
over the gender ids present, loss = MLM + 100 * NC3, backward, gradient clipping 1.0, AdamW
(lr 2e-5, eps 1e-8, no weight decay) and a linear schedule.

Like for like (the framework's share): PyTorch given ncjax's algorithm: masking on the device
with the same static cap of P predictions a row, the MLM head (transform + decoder) only at those
P positions, and the NC3 class statistics over K class slots (a tokens x (K + 1) one-hot) instead
of the vocabulary; the same optimiser. Also with `torch.compile` of the forward and loss, where it
compiles.

ncjax: `ncjax.step.make_train_step` with the `configs/bert_nc3.py` recipe (masking on device,
logits at the masked positions only, NC3 `reference` mode over K class slots, one jitted step with
the state donated).

Mabel (`--sides mabel_torch,mabel_ncjax`, batch x 4 views): a PyTorch re-implementation of the
released Mabel + NC3 step (the four views unmasked through the encoder with MABEL's MLP on [CLS],
InfoNCE with cos / 0.05 + 0.05 x alignment, MLM on a separate masked forward of all 4B sequences
with an untied decoder, the released NC3 on that forward; 0.1 MLM + 10 NC3; AdamW lr 5e-5) against
ncjax's `configs/mabel_nc3.py` terms on the same views (the model FLOPs column counts the MLM
forward only). `ncjax_previous` runs the MLM + NC3 step of `--baseline REF` (the single step before
the loss terms): the same work, so the ratio is the loss-term seam's cost.

Both sides use the same random weights (ncjax's copied into the PyTorch model) and the 271
GN-GloVe first-piece gender ids of the bert-base-uncased vocabulary (from the MiniLM package).
Each side runs in its own process (XLA's and PyTorch's thread pools disturb each other inside one
process; each holds its own copy of the model, about 3-5 GB of host memory per side at bert-base
shape); the parent alternates them in rounds, so load changes on the machine hit both sides.
Reported: median and spread (min-max) of the timed steps after a compile/warm-up call (its time
is reported separately), tokens/s, model TFLOP/s (`ncjax.flops`, the like-for-like work) and MFU
where the device's peak is known. On a GPU, `--device cuda --dtype bfloat16` runs PyTorch under
bf16 autocast with SDPA attention and ncjax with bf16 compute.

    python benchmarks/train_step.py                                   # bert-base, batch 16 x 128
    python benchmarks/train_step.py --layers 6 --hidden 384 --length 64   # MiniLM shape, 16 x 64
    python benchmarks/train_step.py --device cuda --dtype bfloat16 --batch 64   # GPU
    python benchmarks/train_step.py --sides mabel_torch,mabel_ncjax --layers 4 --batch 4 --length 64   # Mabel
    python benchmarks/train_step.py --sides ncjax,ncjax_previous --baseline 7654a73   # the loss-term
        step against the single MLM + NC3 step it replaced (same work; the seam's cost)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ncjax import convert, flops, masking, parallel, step, words  # noqa: E402
from ncjax.model import BertConfig, BertForMaskedLM  # noqa: E402

ALPHA = 100.0
TOTAL_STEPS = 2465  # the paper recipe: 3 epochs of GAP-flipped at batch 16
SIDES = ("torch_reference", "torch_matched", "torch_compiled", "ncjax", "ncjax_mlm", "ncjax_previous",
         "mabel_torch", "mabel_ncjax")
LABELS = {
    "torch_reference": "PyTorch paper reference: all-position logits + released NC3 (vocab one-hot)",
    "torch_matched": "PyTorch like for like: masked-position head + K-slot NC3",
    "torch_compiled": "PyTorch like for like, torch.compile",
    "ncjax": "ncjax: masked-position head + NC3 reference mode",
    "ncjax_mlm": "ncjax: MLM only (alpha 0)",
    "ncjax_previous": "ncjax: the MLM + NC3 step of --baseline REF (before loss terms)",
    "mabel_torch": "PyTorch re-implementation of the released Mabel + NC3 step (4 views)",
    "mabel_ncjax": "ncjax: configs/mabel_nc3.py terms (contrastive + alignment + MLM + NC3)",
}


def _config(recipe: str = "bert_nc3"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(recipe, REPO / "configs" / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ----------------------------------------------------------------------------- one step per side
# Each builder returns run(): one train step, finished on the device, returning its metrics.


def _ncjax_step(cfg, graphdef, params, class_ids, tokenizer, batch, alpha, dtype, baseline_ref=None,
                recipe="bert_nc3"):
    """ncjax's step with the recipe's terms (bert_nc3, or mabel_nc3 on a [B, 4, L] batch); with
    `baseline_ref`, the MLM + NC3 step of `git show REF:ncjax/step.py` instead (the step before it
    became a sum of loss terms)."""
    import importlib.util
    import subprocess
    import tempfile

    from ncjax import terms as terms_lib

    config = _config(recipe)
    config.penalty.alpha = alpha
    mesh = parallel.make_mesh(1)
    schedule = step.make_schedule(config.optim, TOTAL_STEPS)
    tx = step.make_optimizer(config.optim, schedule)
    length = batch["input_ids"].shape[1]
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
                                 cfg.vocab_size, 0.15, masking.default_max_predictions(length, 0.15))
        step_fn = old.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=42, masking=mask_spec,
                                      penalty_spec=old.PenaltySpec.from_config(config.penalty),
                                      class_ids=class_ids, dropout=True)
        state = old.init_state(params, tx, mesh, (len(class_ids), cfg.hidden_size))
        names = {"loss": "loss", "mlm": "mlm", "nc3": "nc3"}
    else:
        setup = terms_lib.Setup(config=config, tokenizer=tokenizer, model_config=cfg, length=length,
                                fields=tuple(batch), workdir=Path(tempfile.mkdtemp()), is_main=False)
        loss_terms = terms_lib.build(config, setup)
        step_fn = step.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=42, terms=loss_terms, dropout=True)
        state = step.init_state(params, tx, mesh, loss_terms, seed=42)
        names = {"loss": "loss", "mlm": "loss/mlm", "nc3": "loss/nc3"}
    holder = {"state": state}
    global_batch = parallel.global_batch(batch, mesh)

    def run():
        holder["state"], metrics = step_fn(holder["state"], global_batch)
        jax.block_until_ready((holder["state"], metrics))
        return {k: float(metrics[v]) if v in metrics else 0.0 for k, v in names.items()}

    return run


def _torch_optimizer(torch_model):
    import torch

    optimizer = torch.optim.AdamW(torch_model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (TOTAL_STEPS - s) / TOTAL_STEPS))
    return optimizer, scheduler


def _reference_masking(ids, mask, special, mask_id: int, vocab: int):
    """The reference's dynamic masking (15 %, 80/10/10, as its mask_tokens) -> (inputs, labels)."""
    import torch

    device = ids.device
    inputs, labels = ids.clone(), ids.clone()
    prob = torch.full(labels.shape, 0.15, device=device)
    prob[torch.isin(labels, special) | (mask == 0)] = 0.0
    chosen = torch.bernoulli(prob).bool()
    labels[~chosen] = -100
    replace = torch.bernoulli(torch.full(labels.shape, 0.8, device=device)).bool() & chosen
    inputs[replace] = mask_id
    rand = torch.bernoulli(torch.full(labels.shape, 0.5, device=device)).bool() & chosen & ~replace
    inputs[rand] = torch.randint(vocab, labels.shape, device=device)[rand]
    return inputs, labels


def _reference_nc3(hidden, inputs, mask, counts, totals, gender, decoder):
    """The released NC3: last layer at t paired with input id t + 1, full-vocabulary one-hot
    totals accumulated in counts/totals, unbiased std of cos(W[c], mu_c - mu_G) over the gender
    ids present (W = `decoder`)."""
    import torch

    eps = float(np.finfo(np.float32).eps)
    h = hidden.detach().float() * mask[..., None]
    keep = mask[:, 1:].bool()
    x, y = h[:, :-1][keep], inputs[:, 1:][keep]
    onehot = torch.nn.functional.one_hot(y, counts.shape[0]).float()  # tokens x vocabulary
    counts.add_(onehot.sum(0))
    totals.add_(onehot.T @ x)
    have = gender[counts[gender] > 0]
    means = totals[have] / (counts[have][:, None] + eps)
    centred = means - means.mean(0)
    w = decoder[have]
    sims = torch.sum(centred / (centred.norm(dim=1, keepdim=True) + eps) * (w / (w.norm(dim=1, keepdim=True) + eps)), 1)
    return sims.std()


def _torch_reference_step(torch_model, class_ids, tokenizer, batch, device, autocast):
    """The paper's released step (see the module docstring)."""
    import torch

    vocab = torch_model.config.vocab_size
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
    mask = torch.from_numpy(batch["attention_mask"].astype(np.int64)).to(device)
    special = torch.tensor(sorted(set(masking.special_token_ids(tokenizer))), device=device)
    gender = torch.tensor(class_ids.astype(np.int64), device=device)
    counts = torch.zeros(vocab, device=device)
    totals = torch.zeros(vocab, torch_model.config.hidden_size, device=device)
    optimizer, scheduler = _torch_optimizer(torch_model)
    torch_model.train()

    def run():
        inputs, labels = _reference_masking(ids, mask, special, tokenizer.mask_token_id, vocab)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = torch_model(input_ids=inputs, attention_mask=mask, labels=labels, output_hidden_states=True)
        nc3 = _reference_nc3(out.hidden_states[-1], inputs, mask, counts, totals, gender,
                             torch_model.cls.predictions.decoder.weight)
        loss = out.loss + ALPHA * nc3
        loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        return {"loss": float(loss.detach()), "mlm": float(out.loss.detach()), "nc3": float(nc3.detach())}

    return run


def _torch_mabel_step(torch_model, class_ids, tokenizer, batch, device, autocast, views: int):
    """A PyTorch re-implementation of the released Mabel + NC3 step (module docstring): the four
    views unmasked through the encoder with MABEL's MLP on [CLS], InfoNCE (cos / 0.05) + 0.05 x
    alignment, MLM on a separate masked forward of all 4B sequences with an untied decoder, the
    released NC3 on that forward with the decoder's rows; 0.1 MLM + 10 NC3; AdamW lr 5e-5."""
    import torch

    hidden, vocab = torch_model.config.hidden_size, torch_model.config.vocab_size
    # MABEL's lm_head: a decoder of its own, initialised from the tied one
    torch_model.cls.predictions.decoder.weight = torch.nn.Parameter(
        torch_model.cls.predictions.decoder.weight.detach().clone())
    head = torch.nn.ModuleDict({"dense1": torch.nn.Linear(hidden, hidden), "dense2": torch.nn.Linear(hidden, hidden)})
    head.to(device)
    length = batch["input_ids"].shape[-1]
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64).reshape(-1, length)).to(device)
    mask = torch.from_numpy(batch["attention_mask"].astype(np.int64).reshape(-1, length)).to(device)
    b = ids.shape[0] // views
    special = torch.tensor(sorted(set(masking.special_token_ids(tokenizer))), device=device)
    gender = torch.tensor(class_ids.astype(np.int64), device=device)
    counts = torch.zeros(vocab, device=device)
    totals = torch.zeros(vocab, hidden, device=device)
    parameters = list(torch_model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=5e-5, eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (TOTAL_STEPS - s) / TOTAL_STEPS))
    cos = torch.nn.CosineSimilarity(dim=-1)
    sim = lambda x, y: cos(x.unsqueeze(1), y.unsqueeze(0)) / 0.05  # noqa: E731
    torch_model.train()
    head.train()

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            cls = torch_model.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
            z = head["dense2"](torch.tanh(head["dense1"](cls))).float().view(b, views, -1)
            op, oh, ap, ah = z[:, 0], z[:, 1], z[:, 2], z[:, 3]
            s = sim(torch.cat((op, ap)), torch.cat((oh, ah)))
            c_loss = torch.nn.functional.cross_entropy(s, torch.arange(s.size(0), device=device))
            a_loss = (sim(op, oh) - sim(ap, ah)).norm(p=2, dim=1).pow(2).mean()
            inputs, labels = _reference_masking(ids, mask, special, tokenizer.mask_token_id, vocab)
            out = torch_model(input_ids=inputs, attention_mask=mask, labels=labels, output_hidden_states=True)
        nc3 = _reference_nc3(out.hidden_states[-1], inputs, mask, counts, totals, gender,
                             torch_model.cls.predictions.decoder.weight)
        loss = c_loss + 0.05 * a_loss + 0.1 * out.loss + 10.0 * nc3
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        return {"loss": float(loss.detach()), "mlm": float(out.loss.detach()), "nc3": float(nc3.detach())}

    return run


def _torch_matched_step(torch_model, class_ids, tokenizer, batch, device, autocast, compile_forward):
    """PyTorch given ncjax's algorithm: on-device masking with a cap of P predictions a row (the
    same top-k rule as `ncjax.masking.mask_tokens`), head at those P positions, K-slot statistics."""
    import torch
    import torch.nn.functional as F

    vocab, hidden = torch_model.config.vocab_size, torch_model.config.hidden_size
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
    mask = torch.from_numpy(batch["attention_mask"].astype(np.int64)).to(device)
    special = torch.tensor(sorted(set(masking.special_token_ids(tokenizer))), device=device)
    p = masking.default_max_predictions(ids.shape[1], 0.15)
    k = len(class_ids)
    slot_table = torch.full((vocab,), k, dtype=torch.long, device=device)
    slot_table[torch.tensor(class_ids.astype(np.int64), device=device)] = torch.arange(k, device=device)
    gender = torch.tensor(class_ids.astype(np.int64), device=device)
    counts = torch.zeros(k, device=device)
    totals = torch.zeros(k, hidden, device=device)
    optimizer, scheduler = _torch_optimizer(torch_model)
    eps = float(np.finfo(np.float32).eps)
    rows = torch.arange(ids.shape[0], device=device)[:, None]
    torch_model.train()

    def forward(inputs, positions, labels, weights):
        last = torch_model.bert(input_ids=inputs, attention_mask=mask).last_hidden_state
        picked = last.gather(1, positions[..., None].expand(-1, -1, hidden))
        logits = torch_model.cls(picked).float()
        nll = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), reduction="none")
        mlm = (nll * weights.reshape(-1)).sum() / weights.sum().clamp(min=1.0)
        return mlm, last

    forward_fn = torch.compile(forward) if compile_forward else forward

    def run():
        u = torch.rand(ids.shape, device=device)
        candidate = (mask > 0) & ~torch.isin(ids, special)
        score = torch.where(candidate & (u < 0.15), u, torch.full_like(u, 2.0))
        neg, positions = torch.topk(-score, p, dim=1)
        weights = (neg > -2.0).float()
        chosen = torch.zeros_like(candidate).index_put_((rows.expand(-1, p), positions), weights > 0)
        kind = torch.rand(ids.shape, device=device)
        inputs = torch.where(chosen & (kind < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
        inputs = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), torch.randint_like(ids, vocab), inputs)
        labels = ids.gather(1, positions)

        optimizer.zero_grad(set_to_none=True)
        with autocast():
            mlm, last = forward_fn(inputs, positions, labels, weights)
        # NC3 reference mode over K slots: next-token classes, running sums, presence-masked std
        x = (last.detach().float() * mask[..., None])[:, :-1].reshape(-1, hidden)
        onehot = F.one_hot(slot_table[inputs[:, 1:].reshape(-1)], k + 1)[:, :k].float() * mask[:, 1:].reshape(-1, 1)
        counts.add_(onehot.sum(0))
        totals.add_(onehot.T @ x)
        present = counts > 0
        means = totals[present] / (counts[present][:, None] + eps)
        centred = means - means.mean(0)
        w = torch_model.cls.predictions.decoder.weight[gender[present]]
        sims = torch.sum(centred / (centred.norm(dim=1, keepdim=True) + eps) * (w / (w.norm(dim=1, keepdim=True) + eps)), 1)
        nc3 = sims.std()
        loss = mlm + ALPHA * nc3
        loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        return {"loss": float(loss.detach()), "mlm": float(mlm.detach()), "nc3": float(nc3.detach())}

    return run


# ----------------------------------------------------------------------------- worker processes


def _model_config(args) -> BertConfig:
    return BertConfig(num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                      intermediate_size=4 * args.hidden, attention_probs_dropout_prob=args.attention_dropout)


def _inputs(args, cfg, tokenizer, class_ids, views: int = 0):
    """The shared batch: [batch, length], or [batch, views, length] for the Mabel sides."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, (args.batch * max(views, 1), args.length)).astype(np.int32)
    # every sequence carries gender words so the penalty has classes from the first step
    ids[:, 1:-1:7] = rng.choice(class_ids, size=ids[:, 1:-1:7].shape)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    if views:
        ids = ids.reshape(args.batch, views, args.length)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _build(side: str, args):
    """The side's run() on the shared random weights and batch (rebuilt identically per process)."""
    import jax.numpy as jnp

    tokenizer = convert.load_tokenizer(convert.minilm_dir())  # the bert-base-uncased vocabulary
    class_ids = np.asarray(words.resolve(words.bundled("gender-gnglove"), tokenizer, "first_piece").ids, np.int32)
    cfg = _model_config(args)
    mabel = side.startswith("mabel")
    batch = _inputs(args, cfg, tokenizer, class_ids, views=4 if mabel else 0)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(0), dtype=dtype)
    if side in ("ncjax", "ncjax_mlm", "ncjax_previous", "mabel_ncjax"):
        graphdef, state = nnx.split(BertForMaskedLM(cfg, rngs=nnx.Rngs(0), dtype=dtype, untie_decoder=mabel))
        params = jax.device_get(nnx.to_pure_dict(state))
        alpha = 0.0 if side == "ncjax_mlm" else 10.0 if mabel else ALPHA
        return _ncjax_step(cfg, graphdef, params, class_ids, tokenizer, batch, alpha, dtype,
                           baseline_ref=args.baseline if side == "ncjax_previous" else None,
                           recipe="mabel_nc3" if mabel else "bert_nc3")

    import contextlib

    import torch
    import transformers

    device = torch.device(args.device)
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"},
                                     attn_implementation="sdpa")
    torch_model = transformers.BertForMaskedLM(hf_cfg)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in convert.params_to_hf(model).items()}
    torch_model.load_state_dict(sd, strict=False)
    torch_model.tie_weights()
    torch_model.to(device)
    if args.dtype == "bfloat16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    if side == "torch_reference":
        return _torch_reference_step(torch_model, class_ids, tokenizer, batch, device, autocast)
    if side == "mabel_torch":
        return _torch_mabel_step(torch_model, class_ids, tokenizer, batch, device, autocast, views=4)
    return _torch_matched_step(torch_model, class_ids, tokenizer, batch, device, autocast, side == "torch_compiled")


def _worker(side: str, args) -> None:
    """Builds the side, times its first (compiling) call, then runs `N` steps per 'run N' line on
    stdin and answers each with one JSON line of per-step seconds and the last metrics."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    sync = lambda: None  # noqa: E731
    if args.device == "cuda" and not side.startswith("ncjax"):
        import torch

        sync = torch.cuda.synchronize
    try:
        run = _build(side, args)
        t = time.perf_counter()
        run()
        sync()
        compile_s = time.perf_counter() - t
        run()  # one more untimed warm-up step
        sync()
        print(json.dumps({"compile_s": compile_s}), file=out, flush=True)
    except Exception as e:  # noqa: BLE001 - reported, e.g. torch.compile without a working toolchain
        print(json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}), file=out,
              flush=True)
        return
    for line in sys.stdin:
        n = int(line.split()[1])
        times, metrics = [], {}
        for _ in range(n):
            t = time.perf_counter()
            metrics = run()
            sync()
            times.append(time.perf_counter() - t)
        print(json.dumps({"times": times, "metrics": metrics}), file=out, flush=True)


def _alternate(sides, args) -> dict:
    """One process per side; after all have compiled, rounds of `args.round` steps per side."""
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("sides", "worker")]
    procs, results = {}, {}
    for side in sides:  # started one at a time so compilations do not overlap
        procs[side] = subprocess.Popen([sys.executable, __file__, "--worker", side, *forwarded],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(procs[side].stdout.readline() or '{"error": "worker exited"}')
        results[side] = {"times": [], **first}
        if "error" in first:
            procs.pop(side).wait()
    done = 0
    while done < args.steps and procs:
        n = min(args.round, args.steps - done)
        for side, proc in list(procs.items()):
            try:
                proc.stdin.write(f"run {n}\n")
                proc.stdin.flush()
                reply = json.loads(proc.stdout.readline())
            except (BrokenPipeError, json.JSONDecodeError):  # e.g. killed for memory: report, go on
                procs.pop(side).wait()
                results[side] = {"times": [], "error": f"worker exited during the timed rounds "
                                                        f"(exit code {proc.returncode})"}
                continue
            results[side]["times"] += reply["times"]
            results[side]["metrics"] = reply["metrics"]
        done += n
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    return results


def _report(results: dict, args) -> None:
    import torch
    import transformers

    cfg = _model_config(args)
    tokens = args.batch * args.length
    step_flops = flops.train_step_flops(cfg, args.batch, args.length, masking.default_max_predictions(args.length, 0.15))
    peak = flops.peak_flops(jax.devices()[0].device_kind if args.device != "cpu" else "cpu", args.dtype)
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} device={args.device} "
          f"jax devices={jax.devices()}")
    print(f"versions: jax {jax.__version__}, flax {__import__('flax').__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; torch threads {torch.get_num_threads()}")
    print(f"shape: layers={args.layers} hidden={args.hidden} heads={args.heads} vocab={cfg.vocab_size} "
          f"batch={args.batch}x{args.length} {args.dtype}, dropout 0.1 (attention {args.attention_dropout}), "
          f"alpha {ALPHA:g}; median (min-max) of {args.steps} steps per side in rounds of {args.round}, one process "
          f"per side; like-for-like model work {step_flops / 1e9:.1f} GFLOP/step")
    ok = {s: r for s, r in results.items() if r["times"]}
    med = {s: float(np.median(r["times"])) for s, r in ok.items()}
    for s, r in results.items():
        if "error" in r:
            print(f"{LABELS[s]}: did not run ({r['error']})")
        else:
            m = r["metrics"]
            print(f"{LABELS[s]}: compile/first step {r['compile_s']:.1f} s; last step loss {m['loss']:.3f} "
                  f"(mlm {m['mlm']:.3f}, nc3 {m['nc3']:.4f})")
    print("| step | s/step (min-max) | tokens/s | model TFLOP/s | vs PyTorch reference | vs PyTorch like for like |")
    print("|---|---|---|---|---|---|")
    for s, t in med.items():
        ts = ok[s]["times"]
        tflops = step_flops / t / 1e12 if s != "torch_reference" else float("nan")
        mfu = f" (MFU {step_flops / t / peak:.1%})" if peak and s != "torch_reference" else ""
        ref = f"{med['torch_reference'] / t:.2f}x" if "torch_reference" in med else "-"
        matched = f"{med['torch_matched'] / t:.2f}x" if "torch_matched" in med else "-"
        print(f"| {LABELS[s]} | {t:.3f} ({min(ts):.3f}-{max(ts):.3f}) | {tokens / t:,.0f} | "
              f"{'-' if s == 'torch_reference' else f'{tflops:.3f}{mfu}'} | {ref} | {matched} |")
    for fast, slow, what in (("mabel_ncjax", "mabel_torch", "Mabel + NC3 step"),
                             ("ncjax", "ncjax_previous", "loss-term step vs the previous single step")):
        if fast in med and slow in med:
            print(f"{what}: {med[slow] / med[fast]:.2f}x ({LABELS[fast]} / {LABELS[slow]}, median s/step)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--attention-dropout", type=float, default=0.1,
                   help="both sides; 0 lets ncjax use fused attention and PyTorch SDPA's flash path")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="PyTorch's device (JAX uses its default)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side")
    p.add_argument("--round", type=int, default=2, help="steps per side per alternating round")
    p.add_argument("--sides", default="torch_reference,torch_matched,torch_compiled,ncjax",
                   help=f"comma-separated subset of {','.join(SIDES)}")
    p.add_argument("--baseline", default="main",
                   help="git revision whose ncjax/step.py the ncjax_previous side runs (the pre-loss-term step)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args.worker, args)
        return
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise SystemExit(f"--sides has unknown entries {sorted(unknown)}; use names from {', '.join(SIDES)}.")
    _report(_alternate(sides, args), args)


if __name__ == "__main__":
    main()
