"""Mixed precision, read from the lowered HLO: in a bfloat16 model every matrix product runs on
bfloat16 operands (forward and backward, exact and fused attention, the MLM train step), while
parameters, optimiser state and the statistics stay float32."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ncjax import convert, parallel
from ncjax import step as step_lib
from conftest import load_module

REPO = Path(__file__).resolve().parents[1]
_DOT = re.compile(r"stablehlo\.dot_general .*: \(tensor<([0-9x]*)x(\w+)>, tensor<([0-9x]*)x(\w+)>\) -> tensor<([0-9x]*)x(\w+)>")


def dots(hlo: str) -> list[dict]:
    """Every dot_general of a StableHLO text: operand/result shapes and element types, and the
    precision its algorithm (if any) asks for (`DotAlgorithmPreset.BF16_BF16_F32` rounds float32
    operands to bfloat16)."""
    found = []
    for line in hlo.splitlines():
        if "stablehlo.dot_general" not in line:
            continue
        m = _DOT.search(line)
        assert m, f"unparsed dot: {line}"
        alg = re.search(r"lhs_precision_type = (\w+), rhs_precision_type = (\w+)", line)
        found.append({"lhs": m.group(2), "rhs": m.group(4), "out": m.group(6), "out_shape": m.group(5),
                      "alg": alg.groups() if alg else None})
    return found


def runs_in_bf16(d: dict) -> bool:
    return (d["lhs"], d["rhs"]) == ("bf16", "bf16") or d["alg"] == ("bf16", "bf16")


def _model_grad_hlo(tiny_bert_dir, dtype, key, **options) -> str:
    model, _ = convert.load_model(tiny_bert_dir, dtype=dtype, **options)
    graphdef, state = nnx.split(model)
    ids = jnp.ones((2, 8), jnp.int32)
    mask = jnp.ones((2, 8), jnp.int32).at[1, 6:].set(0)

    def loss(s):
        out = nnx.merge(graphdef, s)(ids, mask, positions=jnp.zeros((2, 3), jnp.int32), dropout_key=key)
        return jnp.mean(out.logits**2)

    return jax.jit(jax.value_and_grad(loss)).lower(state).as_text()


@pytest.mark.parametrize("options", [dict(), dict(attention_dropout=0.0), dict(attention="exact")],
                         ids=["exact-with-dropout", "fused-no-attention-dropout", "exact-no-key"])
def test_no_float32_dot_in_bf16_encoder_forward_and_backward(tiny_bert_dir, options):
    key = None if options.get("attention") == "exact" else jax.random.key(0)
    found = dots(_model_grad_hlo(tiny_bert_dir, jnp.bfloat16, key, **options))
    # 2 layers x (6 forward + 12 backward) + transform and decoder (2 + 4): all present, all bf16
    assert len(found) >= 2 * 18 + 6
    assert [d for d in found if not runs_in_bf16(d)] == []
    # scores and logits come out in float32 (softmax and loss statistics in float32)
    assert any(d["out"] == "f32" and d["out_shape"] == "2x3x54" for d in found)


def test_float32_model_is_all_float32(tiny_bert_dir):
    # the check above can fail: a float32 model's products are float32 everywhere
    found = dots(_model_grad_hlo(tiny_bert_dir, jnp.float32, jax.random.key(0)))
    assert found and not any(runs_in_bf16(d) for d in found)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_bf16_train_step_products_and_state(tiny_bert_dir, alpha):
    c = load_module(REPO / "configs" / "bert_nc3.py", "bert_nc3").get_config("tiny")
    c.penalty.alpha = alpha
    model, _ = convert.load_model(tiny_bert_dir, dtype=jnp.bfloat16)
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    schedule = step_lib.make_schedule(c.optim, 10)
    tx = step_lib.make_optimizer(c.optim, schedule)
    from ncjax.terms import mlm, nc3

    masking = mlm.MaskSpec((0, 2, 3, 4), 4, 54, 0.15, 6)
    loss_terms = [mlm.MLM(masking)]
    if alpha:
        loss_terms.append(nc3.NC3(nc3.PenaltySpec.from_config(c.penalty), masking, np.array([5, 6, 7, 8], np.int32), 32))
    step_fn = step_lib.make_train_step(graphdef, tx, schedule, mesh=parallel.make_mesh(1), seed=0, terms=loss_terms,
                                       dropout=True)
    shape = jax.ShapeDtypeStruct
    state = {"step": shape((), np.int32), "params": jax.tree.map(lambda x: shape(x.shape, x.dtype), params)}
    state["opt_state"] = jax.eval_shape(tx.init, state["params"])
    if alpha:
        state["terms"] = {"nc3": {"sums": shape((4, 32), np.float32), "counts": shape((4,), np.float32)}}
    batch = {"input_ids": shape((8, 16), np.int32), "attention_mask": shape((8, 16), np.int32)}
    found = dots(step_fn.lower(state, batch).as_text())
    f32 = [d for d in found if not runs_in_bf16(d)]
    # MLM alone: every product in bf16. With NC3, only its class-statistics sum ([K, H], float32 by
    # design: sums over the global batch must not round) is float32.
    assert f32 == ([] if not alpha else [{"lhs": "f32", "rhs": "f32", "out": "f32", "out_shape": "4x32", "alg": None}])
    assert len(found) > 40
    # master parameters and optimiser state stay float32
    new_state, _ = jax.eval_shape(step_fn, state, batch)
    floats = [x for x in jax.tree.leaves((new_state["params"], new_state["opt_state"]))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
