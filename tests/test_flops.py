"""Model FLOPs of the train step: hand counts for the tiny configuration and a tiny ALBERT
(factorised embeddings, shared layers), the products in the lowered HLO of a model of every
family (an independent count), the peak table and the MFU formula."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ncjax import flops
from ncjax.convert import load_model
from ncjax.model import BertConfig, BertForMaskedLM

TINY = BertConfig(vocab_size=54, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64)


def test_tiny_config_hand_count():
    # batch 8, length 16, 6 predictions a sequence; H 32, I 64, L 2 layers, V 54
    per_token_layer = (3 * 32 * 32 + 32 * 32 + 32 * 64 + 64 * 32) * 2 + (16 * 32 + 16 * 32) * 2  # 16384 + 2048
    head_per_prediction = (32 * 32 + 32 * 54) * 2  # 5504
    forward = 8 * 16 * 2 * per_token_layer + 8 * 6 * head_per_prediction
    assert forward == 4_982_784
    assert flops.forward_flops(TINY, 8, 16, 6) == forward
    assert flops.train_step_flops(TINY, 8, 16, 6) == 3 * forward


def test_albert_hand_count():
    # H 32, I 64, E 16, V 54; 4 depths x 2 inner layers = 8 layer runs from 4 parameter layers
    albert = BertConfig(model_type="albert", vocab_size=54, hidden_size=32, embedding_size=16, num_hidden_layers=4,
                        num_hidden_groups=2, inner_group_num=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64)
    per_token_layer = (3 * 32 * 32 + 32 * 32 + 32 * 64 + 64 * 32) * 2 + (16 * 32 + 16 * 32) * 2  # as TINY's
    projection = 16 * 32 * 2  # embeddings 16 -> hidden 32, every token
    head_per_prediction = (32 * 16 + 16 * 54) * 2  # dense hidden -> 16, decoder 16 x 54: 2752
    forward = 8 * 16 * (8 * per_token_layer + projection) + 8 * 6 * head_per_prediction
    assert forward == 19_137_536
    assert flops.forward_flops(albert, 8, 16, 6) == forward
    # inner_group_num 1: one layer run per depth, whatever the number of groups
    single = dataclasses.replace(albert, inner_group_num=1, num_hidden_groups=1)
    assert flops.forward_flops(single, 8, 16, 6) == forward - 8 * 16 * 4 * per_token_layer


def _hlo_dot_flops(hlo: str) -> int:
    """2 x (output elements) x (contracted size) summed over every dot_general."""
    total = 0
    for line in hlo.splitlines():
        if "stablehlo.dot_general" not in line:
            continue
        shapes = re.search(r": \(tensor<([0-9x]*)x\w+>, tensor<[0-9x]*x\w+>\) -> tensor<([0-9x]*)x\w+>", line)
        lhs = [int(d) for d in shapes.group(1).split("x")]
        out = [int(d) for d in shapes.group(2).split("x")]
        contracting = [int(d) for d in re.search(r"contracting_dims = \[([0-9, ]*)\]", line).group(1).split(",")]
        total += 2 * int(np.prod(out)) * int(np.prod([lhs[d] for d in contracting]))
    return total


# one model of every other family (random weights): the same products, ALBERT's own on top
FAMILY_CONFIGS = {
    "roberta": dataclasses.replace(TINY, model_type="roberta", pad_token_id=1, type_vocab_size=1),
    "distilbert": dataclasses.replace(TINY, model_type="distilbert", type_vocab_size=0),
    "albert": dataclasses.replace(TINY, model_type="albert", embedding_size=16, num_hidden_layers=4,
                                  num_hidden_groups=2, inner_group_num=2),
}


@pytest.mark.parametrize("attention", ["exact", "auto"])
def test_count_equals_the_products_xla_runs(tiny_bert_dir, attention):
    model, cfg = load_model(tiny_bert_dir, attention=attention)
    _check_hlo(model, cfg)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_count_equals_the_products_xla_runs_for_every_family(family):
    cfg = FAMILY_CONFIGS[family]
    model = BertForMaskedLM(cfg, rngs=nnx.Rngs(0))
    if family == "albert":  # E != H, shared layers: the case the BERT count does not cover
        assert len(model.layers) == 4 and len(model.schedule) == 8 and cfg.head_size == 16
    _check_hlo(model, cfg)


def _check_hlo(model, cfg):
    graphdef, state = nnx.split(model)
    ids = jnp.ones((8, 16), jnp.int32)
    positions = jnp.zeros((8, 6), jnp.int32)

    def loss(s):
        return jnp.mean(nnx.merge(graphdef, s)(ids, positions=positions).logits ** 2)

    fwd = jax.jit(loss).lower(state).as_text()
    both = jax.jit(jax.value_and_grad(loss)).lower(state).as_text()
    assert _hlo_dot_flops(fwd) == flops.forward_flops(cfg, 8, 16, 6)
    assert _hlo_dot_flops(both) == flops.train_step_flops(cfg, 8, 16, 6)


def test_peak_table_override_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert flops.peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 156e12  # TF32
    assert flops.peak_flops("NVIDIA L40S", "bfloat16") == 362e12  # not taken for an L4
    assert flops.peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert flops.peak_flops("TPU v5p", "bfloat16") == 459e12
    assert flops.peak_flops("cpu", "float32") is None
    assert flops.peak_flops("cpu", "float32", override_tflops=2.5) == 2.5e12
    assert flops.mfu(4e12, 10.0, 100e12, 2) == pytest.approx(0.2)
    assert flops.mfu(4e12, 10.0, None, 2) is None
