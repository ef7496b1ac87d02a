"""Forward and forward+backward throughput: ncjax BertForMaskedLM vs transformers (PyTorch).

Both run the same random base-shaped weights of one model family (--family bert or roberta; the
PyTorch side is that family's transformers class; ncjax's weights are copied into it)
on the same batch in one process, in float32, and report tokens/s and the ncjax / PyTorch ratio.
Forward+backward is the gradient of the mean-squared MLM logits with respect to all parameters,
with logits at every position in both (the same work). A third ncjax row computes logits only at
the positions the train step scores: `ncjax.masking.mask_tokens` positions with the step's static
cap of P predictions a row (`default_max_predictions`, e.g. 36 of 128), the head's real work.

    python benchmarks/forward.py                 # bert-base shape, batch 8 x 128
    python benchmarks/forward.py --layers 2      # quicker smoke run
    python benchmarks/forward.py --family roberta  # roberta-base shape (vocabulary 50265)
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ncjax import families, masking  # noqa: E402
from ncjax.convert import params_to_hf  # noqa: E402
from ncjax.model import BertConfig, BertForMaskedLM  # noqa: E402


# The base checkpoints' shapes where they differ from BertConfig's defaults (bert-base).
FAMILY_SHAPES = {
    "bert": {},
    "roberta": dict(model_type="roberta", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                    pad_token_id=1, layer_norm_eps=1e-5),
}


def timeit(fn, repeats: int) -> float:
    fn()  # compile / warm up
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--family", default="bert", choices=tuple(FAMILY_SHAPES), help="model family (default: bert)")
    p.add_argument("--torch-device", default="cpu", help="cpu or cuda; on a GPU both sides use TF32 matmuls")
    args = p.parse_args()

    import torch
    import transformers

    dev = torch.device(args.torch_device)
    if dev.type == "cuda":
        # XLA's default float32 matmul precision on GPUs is TF32; give PyTorch the same.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = BertConfig(num_hidden_layers=args.layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     **FAMILY_SHAPES[args.family])
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids)
    n_pred = masking.default_max_predictions(args.length, 0.15)  # the train step's static cap P
    positions = np.asarray(masking.mask_tokens(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask), special_ids=(),
                                               mask_id=103, vocab_size=cfg.vocab_size,
                                               max_predictions=n_pred)["positions"])
    tokens = args.batch * args.length

    def loss(s, ids, mask, types, positions=None):
        out = nnx.merge(graphdef, s)(ids, mask, types, positions=positions)
        return jnp.mean(out.logits**2)

    fwd = jax.jit(lambda s, i, m, t: nnx.merge(graphdef, s)(i, m, t).logits)
    grad = jax.jit(jax.value_and_grad(loss))
    grad_pos = jax.jit(jax.value_and_grad(loss))
    xs = [jnp.asarray(a) for a in (ids, mask, types)]

    hf_dict = cfg.to_hf_dict()
    hf_cfg = transformers.AutoConfig.for_model(hf_dict.pop("model_type"), **hf_dict)
    hf_cfg.attn_implementation = "sdpa"
    torch_model = transformers.AutoModelForMaskedLM.from_config(hf_cfg)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in params_to_hf(model).items()}
    torch_model.load_state_dict(sd, strict=False)
    torch_model.to(dev).train()  # dropout probabilities are 0, so train mode equals eval numerics
    t_in = {k: torch.from_numpy(v.astype(np.int64)).to(dev)
            for k, v in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", types))
            if k != "token_type_ids" or families.get(args.family).token_types}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    with torch.no_grad():
        ref = torch_model(**t_in).logits.cpu().numpy()
    got = np.asarray(fwd(state, *xs))
    err = float(np.abs(got - ref).max())

    def torch_fwd():
        with torch.no_grad():
            torch_model(**t_in).logits
        sync()

    def torch_fwd_bwd():
        torch_model.zero_grad(set_to_none=True)
        out = torch_model(**t_in).logits
        (out**2).mean().backward()
        sync()

    # PyTorch is timed first: XLA's CPU thread pool, once busy, slows PyTorch's threads that follow.
    t_fwd, t_fwd_bwd = timeit(torch_fwd, args.repeats), timeit(torch_fwd_bwd, args.repeats)
    rows = [
        ("forward", timeit(lambda: jax.block_until_ready(fwd(state, *xs)), args.repeats), t_fwd),
        ("forward+backward", timeit(lambda: jax.block_until_ready(grad(state, *xs)), args.repeats), t_fwd_bwd),
    ]
    t_pos = timeit(lambda: jax.block_until_ready(grad_pos(state, *xs, jnp.asarray(positions))), args.repeats)

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} devices={jax.devices()}")
    print(f"versions: jax {jax.__version__}, flax {__import__('flax').__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; torch threads {torch.get_num_threads()}")
    print(f"shape: family={args.family} layers={args.layers} hidden={cfg.hidden_size} vocab={cfg.vocab_size} batch={args.batch}x{args.length}"
          f" float32; max |logit diff| = {err:.2e}")
    print("| pass | ncjax tokens/s | PyTorch tokens/s | ratio |")
    print("|---|---|---|---|")
    for name, tj, tt in rows:
        print(f"| {name} | {tokens / tj:,.0f} | {tokens / tt:,.0f} | {tt / tj:.2f}x |")
    tt_fb = rows[1][2]
    print(f"| forward+backward, ncjax logits at the step's {n_pred} of {args.length} positions | {tokens / t_pos:,.0f} | "
          f"{tokens / tt_fb:,.0f} (all positions) | {tt_fb / t_pos:.2f}x |")


if __name__ == "__main__":
    main()
