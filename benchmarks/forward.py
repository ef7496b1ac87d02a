"""Forward and forward+backward throughput: ncjax BertForMaskedLM vs transformers (PyTorch).

Each side runs in its own process (the script starts itself with `--side jax`, then with
`--side torch`, and reads one JSON line from each), on the CPU by default, so neither
framework's thread pool competes with the other's. Both score the same weights and the same
batch: the jax side draws random weights of the family's base-checkpoint shape (`--family`:
bert-base, roberta-base, distilbert-base (6 layers), albert-base-v2 (embeddings of 128 projected
to hidden 768, 12 layers sharing one set of weights, vocabulary 30000); `--layers` shortens any
of them) and a random batch from `--seed`, and writes the weights in the family's Hugging Face
layout (safetensors), the batch and its logits to a temporary directory; the torch side loads
exactly those weights into the family's transformers masked-LM class (sdpa attention) and fails
unless its logits match ncjax's. Everything runs in float32.

Rows: forward (logits at every position); forward+backward, the gradient of the mean squared
MLM logits with respect to all parameters, logits at every position on both sides (the same
work); and an ncjax forward+backward with logits only at the positions the train step scores
(`ncjax.masking.mask_tokens` positions with the step's static cap of P predictions a row,
`default_max_predictions`, e.g. 36 of 128), the head's real work, against PyTorch's
all-position row. Each pass is called twice to warm up (the first call compiles), then timed
`--repeats` (>= 10) times; the table gives tokens/s at the median time with the range over the
timed calls, and the ratio of the median times (PyTorch / ncjax; above 1: ncjax is faster).

    python benchmarks/forward.py                                     # bert-base shape, batch 8 x 128
    python benchmarks/forward.py --family albert                     # albert-base-v2 shape
    python benchmarks/forward.py --family distilbert --layers 2 --batch 2 --length 32   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# The base checkpoints' shapes as BertConfig fields, where they differ from its defaults (bert-base).
FAMILY_SHAPES: dict[str, dict[str, Any]] = {
    "bert": {},
    "roberta": dict(model_type="roberta", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                    pad_token_id=1, layer_norm_eps=1e-5),
    "distilbert": dict(model_type="distilbert", num_hidden_layers=6, type_vocab_size=0),
    "albert": dict(model_type="albert", vocab_size=30000, embedding_size=128, hidden_act="gelu_new"),
}
WARMUP = 2
MIN_REPEATS = 10
# float32 on both sides agrees to ~1e-5; TF32 matmuls (XLA's GPU default, PyTorch told to match) to ~1e-3.
TOLERANCE = {"cpu": 1e-3, "cuda": 1e-2}


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after WARMUP untimed calls."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def jax_side(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Draws the weights and batch, writes them and ncjax's logits to `work`, times ncjax."""
    import flax
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from safetensors.numpy import save_file

    sys.path.insert(0, str(ROOT))
    from ncjax import families, masking
    from ncjax.convert import params_to_hf
    from ncjax.model import BertConfig, BertForMaskedLM

    shape = {**FAMILY_SHAPES[args.family], **({"num_hidden_layers": args.layers} if args.layers else {})}
    cfg = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **shape)
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(args.seed))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(1000, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids) if families.get(cfg.model_type).token_types else None
    n_pred = masking.default_max_predictions(args.length, 0.15)  # the train step's static cap P
    positions = masking.mask_tokens(jax.random.key(args.seed), jnp.asarray(ids), jnp.asarray(mask), special_ids=(),
                                    mask_id=103, vocab_size=cfg.vocab_size, max_predictions=n_pred)["positions"]

    save_file(params_to_hf(model), str(work / "weights.safetensors"))
    np.savez(work / "inputs.npz", input_ids=ids, attention_mask=mask,
             **({"token_type_ids": types} if types is not None else {}))
    (work / "config.json").write_text(json.dumps(cfg.to_hf_dict()))

    def loss(s, ids, mask, types, positions=None):
        out = nnx.merge(graphdef, s)(ids, mask, types, positions=positions)
        return jnp.mean(out.logits**2)

    fwd = jax.jit(lambda s, i, m, t: nnx.merge(graphdef, s)(i, m, t).logits)
    grad = jax.jit(jax.value_and_grad(loss))
    xs = (jnp.asarray(ids), jnp.asarray(mask), None if types is None else jnp.asarray(types))
    np.save(work / "logits.npy", np.asarray(fwd(state, *xs)))
    times = {
        "forward": timed(lambda: jax.block_until_ready(fwd(state, *xs)), args.repeats),
        "forward+backward": timed(lambda: jax.block_until_ready(grad(state, *xs)), args.repeats),
        "positions": timed(lambda: jax.block_until_ready(grad(state, *xs, positions)), args.repeats),
    }
    return dict(times=times, n_pred=n_pred, hidden=cfg.hidden_size, vocab=cfg.vocab_size,
                layers=cfg.num_hidden_layers, embedding=cfg.embedding_size or cfg.hidden_size,
                versions=f"jax {jax.__version__}, flax {flax.__version__}", devices=str(jax.devices()))


def torch_side(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Loads the jax side's weights and batch into transformers, checks the logits, times PyTorch."""
    import torch
    import transformers
    from safetensors.torch import load_file

    dev = torch.device(args.device)
    if dev.type == "cuda":
        # XLA's default float32 matmul precision on GPUs is TF32; give PyTorch the same.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    hf = json.loads((work / "config.json").read_text())
    hf_cfg = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    model = transformers.AutoModelForMaskedLM.from_config(hf_cfg, attn_implementation="sdpa")
    weights = load_file(str(work / "weights.safetensors"))
    result = model.load_state_dict(weights, strict=False)
    # Keys a state dict holds that the export leaves out: buffers, and the decoder's weight and bias,
    # which share their storage with the word embeddings and the prediction bias that it writes.
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in weights}
    tied = {k for k, v in state.items() if k not in weights and v.data_ptr() in loaded}
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith(("position_ids", "token_type_ids"))]
    if missing or result.unexpected_keys:
        raise SystemExit(f"forward.py: {type(model).__name__} did not take the ncjax weights as they are "
                         f"(missing {missing}, unexpected {result.unexpected_keys}); fix the export names.")
    model.to(dev).train()  # dropout probabilities are 0, so train mode equals eval numerics
    t_in = {k: torch.from_numpy(v.astype(np.int64)).to(dev) for k, v in np.load(work / "inputs.npz").items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    with torch.no_grad():
        err = float(np.abs(model(**t_in).logits.cpu().numpy() - np.load(work / "logits.npy")).max())

    def fwd():
        with torch.no_grad():
            model(**t_in).logits
        sync()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        (model(**t_in).logits ** 2).mean().backward()
        sync()

    times = {"forward": timed(fwd, args.repeats), "forward+backward": timed(fwd_bwd, args.repeats)}
    return dict(times=times, err=err, model=type(model).__name__, attention=model.config._attn_implementation,
                versions=f"torch {torch.__version__}, transformers {transformers.__version__}",
                threads=torch.get_num_threads())


def run_side(side: str, args: argparse.Namespace, work: str) -> dict[str, Any]:
    """Runs this script as `--side side` in a fresh process; returns the JSON line it prints."""
    env = dict(os.environ)
    if side == "jax":
        env["JAX_PLATFORMS"] = args.device
    cmd = [sys.executable, __file__, "--side", side, "--work", work, "--family", args.family, "--batch",
           str(args.batch), "--length", str(args.length), "--repeats", str(args.repeats), "--seed", str(args.seed),
           "--device", args.device] + (["--layers", str(args.layers)] if args.layers else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"forward.py: the {side} side exited with status {proc.returncode} "
                         "(its error is printed above); fix it and run again.")
    return json.loads(lines[-1])


def cell(tokens: int, times: list[float]) -> str:
    """tokens/s at the median time, with the range over the timed calls."""
    return f"{tokens / statistics.median(times):,.0f} ({tokens / max(times):,.0f}-{tokens / min(times):,.0f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="bert", choices=tuple(FAMILY_SHAPES),
                   help="model family, at its base checkpoint's shape (default: bert)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default: the base checkpoint's)")
    p.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed calls a pass, >= {MIN_REPEATS}")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and batch")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu (default) or cuda for both sides; on a GPU both use TF32 matmuls")
    p.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < MIN_REPEATS:
        p.error(f"--repeats is {args.repeats}; use at least {MIN_REPEATS} so the median and range mean something.")
    if args.side:
        side = jax_side if args.side == "jax" else torch_side
        print(json.dumps(side(args, Path(args.work))))
        return

    with tempfile.TemporaryDirectory(prefix="ncjax-forward-") as work:
        jx = run_side("jax", args, work)
        th = run_side("torch", args, work)
    if not th["err"] <= TOLERANCE[args.device]:
        raise SystemExit(f"forward.py: the PyTorch logits differ from ncjax's by up to {th['err']:.2e} "
                         f"(> {TOLERANCE[args.device]:.0e}); the two sides do not compute the same model.")

    tokens = args.batch * args.length
    n = args.repeats
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}; "
          f"each side in its own process on {args.device}")
    print(f"jax side: {jx['versions']}, devices {jx['devices']}")
    print(f"torch side: {th['versions']}, {th['model']} ({th['attention']} attention), threads {th['threads']}")
    print(f"shape: family={args.family} layers={jx['layers']} hidden={jx['hidden']}"
          f"{'' if jx['embedding'] == jx['hidden'] else ' embedding=' + str(jx['embedding'])} vocab={jx['vocab']} "
          f"batch={args.batch}x{args.length} float32 seed={args.seed}; max |logit diff| = {th['err']:.2e}")
    print(f"timing: {WARMUP} warm-up calls, then {n} timed calls a pass; tokens/s at the median time "
          f"(range over the {n} calls); ratio of the median times, PyTorch / ncjax")
    print("| pass | ncjax tokens/s | PyTorch tokens/s | ratio |")
    print("|---|---|---|---|")
    tj, tt = jx["times"], th["times"]
    for name in ("forward", "forward+backward"):
        print(f"| {name} | {cell(tokens, tj[name])} | {cell(tokens, tt[name])} | "
              f"{statistics.median(tt[name]) / statistics.median(tj[name]):.2f}x |")
    fb = tt["forward+backward"]
    print(f"| forward+backward, ncjax logits at the step's {jx['n_pred']} of {args.length} positions | "
          f"{cell(tokens, tj['positions'])} | {cell(tokens, fb)} (all positions) | "
          f"{statistics.median(fb) / statistics.median(tj['positions']):.2f}x |")


if __name__ == "__main__":
    main()
