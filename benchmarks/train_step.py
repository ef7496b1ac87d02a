"""One MLM + NC3 train step: ncjax's jitted step vs the PyTorch reference step, same CPU, one process.

Reference (what the paper's released BEC + NC3 code does per step): transformers
`BertForMaskedLM` in train mode (dropout on) with logits at every position and the MLM loss on
the masked ones (15 %, 80/10/10 masking on the host), then the released NC3 algorithm: the last
encoder layer paired with the next input token, class statistics accumulated with a
tokens x vocabulary one-hot (`one_hot(Y, V).T @ X`), the unbiased std of cos(W[c], mu_c - mu_G)
over the gender ids present, loss = MLM + 100 * NC3, backward, gradient clipping 1.0, AdamW
(lr 2e-5, eps 1e-8, no weight decay) and a linear schedule.

ncjax: `ncjax.step.make_train_step` with the same recipe (configs/bert_nc3.py defaults):
masking on device, logits only at the masked positions, NC3 `reference` mode with K slots
instead of the vocabulary, one jitted step with the state donated. Also timed: the same step with
alpha 0 (MLM only), to show what the penalty costs.

Both use random bert-base-shaped weights (12 layers, hidden 768, vocab 30522) and the 271
GN-GloVe first-piece gender ids of the bert-base-uncased vocabulary (from the MiniLM package).

    python benchmarks/train_step.py               # bert-base, batch 16 x 128, ~5 minutes on 2 cores
    python benchmarks/train_step.py --layers 2    # quick smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ncjax import convert, masking, parallel, step, words  # noqa: E402
from ncjax.model import BertConfig, BertForMaskedLM  # noqa: E402


def _time_steps(run_step, warmup: int, steps: int) -> float:
    """Mean seconds per step after `warmup` untimed steps (the first one compiles)."""
    for _ in range(warmup):
        run_step()
    t = time.perf_counter()
    for _ in range(steps):
        run_step()
    return (time.perf_counter() - t) / steps


def _ncjax_step_time(cfg, graphdef, params, class_ids, tokenizer, batch, alpha, warmup, steps, total_steps):
    config = _config()
    config.penalty.alpha = alpha
    mesh = parallel.make_mesh(1)
    schedule = step.make_schedule(config.optim, total_steps)
    tx = step.make_optimizer(config.optim, schedule)
    length = batch["input_ids"].shape[1]
    mask_spec = step.MaskSpec(tuple(masking.special_token_ids(tokenizer)), tokenizer.mask_token_id, cfg.vocab_size,
                              0.15, masking.default_max_predictions(length, 0.15))
    step_fn = step.make_train_step(graphdef, tx, schedule, mesh=mesh, seed=42, masking=mask_spec,
                                    penalty_spec=step.PenaltySpec.from_config(config.penalty),
                                    class_ids=class_ids if alpha > 0 else None, dropout=True)
    state = step.init_state(params, tx, mesh, (len(class_ids), cfg.hidden_size) if alpha > 0 else None)
    global_batch = parallel.global_batch(batch, mesh)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step_fn(holder["state"], global_batch)
        jax.block_until_ready(metrics)
        return metrics

    seconds = _time_steps(run, warmup, steps)
    return seconds, {k: float(v) for k, v in jax.device_get(run()).items()}


def _config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bert_nc3", Path(__file__).resolve().parents[1] / "configs" / "bert_nc3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _torch_step_time(torch_model, class_ids, tokenizer, batch, warmup, steps, total_steps, alpha=100.0):
    import torch

    vocab = torch_model.config.vocab_size
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
    mask = torch.from_numpy(batch["attention_mask"].astype(np.int64))
    special = torch.tensor(sorted(set(masking.special_token_ids(tokenizer))))
    gender = torch.tensor(class_ids.astype(np.int64))
    counts = torch.zeros(vocab)
    totals = torch.zeros(vocab, torch_model.config.hidden_size)
    optimizer = torch.optim.AdamW(torch_model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (total_steps - s) / total_steps))
    eps = float(np.finfo(np.float32).eps)
    torch_model.train()
    last = {}

    def run():
        # host-side dynamic masking, as the reference's mask_tokens
        inputs, labels = ids.clone(), ids.clone()
        prob = torch.full(labels.shape, 0.15)
        prob[torch.isin(labels, special) | (mask == 0)] = 0.0
        chosen = torch.bernoulli(prob).bool()
        labels[~chosen] = -100
        replace = torch.bernoulli(torch.full(labels.shape, 0.8)).bool() & chosen
        inputs[replace] = tokenizer.mask_token_id
        rand = torch.bernoulli(torch.full(labels.shape, 0.5)).bool() & chosen & ~replace
        inputs[rand] = torch.randint(vocab, labels.shape)[rand]

        optimizer.zero_grad(set_to_none=True)
        out = torch_model(input_ids=inputs, attention_mask=mask, labels=labels, output_hidden_states=True)
        # the released NC3: last layer at t paired with input id t + 1, full-vocabulary one-hot totals
        h = out.hidden_states[-1].detach() * mask[..., None]
        keep = mask[:, 1:].bool()
        x, y = h[:, :-1][keep], inputs[:, 1:][keep]
        onehot = torch.nn.functional.one_hot(y, vocab).float()  # tokens x vocabulary
        counts.add_(onehot.sum(0))
        totals.add_(onehot.T @ x)
        have = gender[counts[gender] > 0]
        means = totals[have] / (counts[have][:, None] + eps)
        centred = means - means.mean(0)
        w = torch_model.cls.predictions.decoder.weight[have]
        sims = torch.sum(centred / (centred.norm(dim=1, keepdim=True) + eps) * (w / (w.norm(dim=1, keepdim=True) + eps)), 1)
        nc3 = sims.std()
        loss = out.loss + alpha * nc3
        loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        last.update(loss=float(loss.detach()), mlm=float(out.loss.detach()), nc3=float(nc3.detach()))

    seconds = _time_steps(run, warmup, steps)
    return seconds, dict(last)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--steps", type=int, default=2, help="timed steps per side (after one warm-up step)")
    args = p.parse_args()

    import torch
    import transformers

    tokenizer = convert.load_tokenizer(convert.minilm_dir())  # the bert-base-uncased vocabulary
    class_ids = np.asarray(words.resolve(words.bundled("gender-gnglove"), tokenizer, "first_piece").ids, np.int32)
    cfg = BertConfig(num_hidden_layers=args.layers)
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = jax.device_get(nnx.to_pure_dict(state))

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    # every sequence carries gender words so the penalty has classes from the first step
    ids[:, 1:-1:7] = rng.choice(class_ids, size=ids[:, 1:-1:7].shape)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    tokens = ids.size
    total_steps = 2465  # the paper recipe: 3 epochs of GAP-flipped at batch 16

    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
    torch_model = transformers.BertForMaskedLM(hf_cfg)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in convert.params_to_hf(model).items()}
    torch_model.load_state_dict(sd, strict=False)
    torch_model.tie_weights()
    del model, state

    t_torch, m_torch = _torch_step_time(torch_model, class_ids, tokenizer, batch, 1, args.steps, total_steps)
    del torch_model
    t_nc3, m_nc3 = _ncjax_step_time(cfg, graphdef, params, class_ids, tokenizer, batch, 100.0, 1, args.steps,
                                    total_steps)
    t_mlm, _ = _ncjax_step_time(cfg, graphdef, params, class_ids, tokenizer, batch, 0.0, 1, args.steps,
                                    total_steps)

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} devices={jax.devices()}")
    print(f"versions: jax {jax.__version__}, flax {__import__('flax').__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; torch threads {torch.get_num_threads()}")
    print(f"shape: layers={args.layers} hidden={cfg.hidden_size} vocab={cfg.vocab_size} batch={args.batch}x{args.length} "
          f"float32, dropout 0.1, {len(class_ids)} gender ids, alpha 100; mean of {args.steps} steps after 1 warm-up")
    print(f"last step: PyTorch loss {m_torch['loss']:.3f} (mlm {m_torch['mlm']:.3f}, nc3 {m_torch['nc3']:.4f}); "
          f"ncjax loss {m_nc3['loss']:.3f} (mlm {m_nc3['mlm']:.3f}, nc3 {m_nc3['nc3']:.4f})")
    print("| step | s/step | tokens/s | vs PyTorch |")
    print("|---|---|---|---|")
    print(f"| PyTorch reference: MLM (all-position logits) + released NC3 (vocab one-hot) | {t_torch:.2f} | "
          f"{tokens / t_torch:,.0f} | 1.00x |")
    print(f"| ncjax: MLM (masked-position logits) + NC3 reference mode | {t_nc3:.2f} | {tokens / t_nc3:,.0f} | "
          f"{t_torch / t_nc3:.2f}x |")
    print(f"| ncjax: MLM only (alpha 0) | {t_mlm:.2f} | {tokens / t_mlm:,.0f} | {t_torch / t_mlm:.2f}x |")
    print(f"ratio ncjax MLM+NC3 vs PyTorch reference: {t_torch / t_nc3:.2f}x (goal >= 1.5x); "
          f"NC3 overhead in ncjax: {100 * (t_nc3 / t_mlm - 1):+.1f} % of the MLM-only step")


if __name__ == "__main__":
    main()
