"""Mabel's pieces against independent references: InfoNCE + alignment against a PyTorch
re-implementation of the released formulas (value and gradient), the untied decoder and its
tie-back export (transformers on the same weights), trainable term parameters (hand-computed
SGD update, seeding, export without them), and the four-view schema (hand-made cases, the
bundled GLUE pairs, one-sentence errors)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ncjax import convert, data, pairs, parallel
from ncjax import step as step_lib

# ----------------------------------------------------------------------------- term parameters


class _Probe:
    """A term owning parameters w [3]: value sum((w - 1)^2), which never touches the model."""

    name, weight, fields = "probe", 1.0, ("input_ids", "attention_mask")

    def init_state(self):
        return None

    def init_params(self, key):
        return {"w": jax.random.normal(key, (3,), jnp.float32)}

    def __call__(self, ctx, state):
        w = ctx.term_params[self.name]["w"]
        return jnp.sum(jnp.square(w - 1.0)), None, {}


def test_term_parameters_are_seeded_updated_with_the_model_and_not_exported(tiny_bert_dir):
    model, _ = convert.load_model(tiny_bert_dir)
    graphdef, state = nnx.split(model)
    params = jax.device_get(nnx.to_pure_dict(state))
    mesh = parallel.make_mesh(1)
    tx = optax.sgd(0.1)
    s0 = step_lib.init_state(params, tx, mesh, [_Probe()], seed=7)
    w0 = np.asarray(s0["term_params"]["probe"]["w"])
    np.testing.assert_array_equal(np.asarray(step_lib.init_state(params, tx, mesh, [_Probe()], seed=7)
                                             ["term_params"]["probe"]["w"]), w0)
    assert not np.array_equal(np.asarray(step_lib.init_state(params, tx, mesh, [_Probe()], seed=8)
                                         ["term_params"]["probe"]["w"]), w0)
    assert "term_params" not in step_lib.init_state(params, tx, mesh, [], seed=7)  # other recipes: layout kept
    step = step_lib.make_train_step(graphdef, tx, optax.constant_schedule(0.1), mesh=mesh, seed=7,
                                    terms=[_Probe()], dropout=False)
    batch = {"input_ids": np.ones((2, 4), np.int32), "attention_mask": np.ones((2, 4), np.int32)}
    s1, metrics = step(s0, parallel.global_batch(batch, mesh))
    np.testing.assert_allclose(np.asarray(s1["term_params"]["probe"]["w"]), w0 - 0.1 * 2 * (w0 - 1.0), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss/probe"]), np.sum((w0 - 1.0) ** 2), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # zero gradient: the model is unchanged
    assert set(convert.params_to_hf(nnx.merge(graphdef, s1["params"]))) == set(
        convert.params_to_hf(model))  # the export holds the masked LM alone


