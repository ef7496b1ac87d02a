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
from ncjax.terms import alignment, contrastive

# ----------------------------------------------------------------------------- the losses


def _torch_mabel(op, oh, ap, ah, head, temp):
    """MABEL's cl_forward on given [CLS] states: MLPLayer, Similarity(temp), CrossEntropyLoss on
    cat(orig, aug) premise -> hypothesis, align_loss_fct(x, y) = (x - y).norm(p=2, dim=1) ** 2 mean."""
    import torch

    dense1, dense2 = torch.nn.Linear(*head["dense1"]["kernel"].shape), torch.nn.Linear(*head["dense2"]["kernel"].shape)
    with torch.no_grad():
        for layer, name in ((dense1, "dense1"), (dense2, "dense2")):
            layer.weight.copy_(torch.tensor(np.asarray(head[name]["kernel"]).T))
            layer.bias.copy_(torch.tensor(np.asarray(head[name]["bias"])))
    mlp = lambda x: dense2(torch.tanh(dense1(x)))  # noqa: E731
    cos = torch.nn.CosineSimilarity(dim=-1)
    sim = lambda x, y: cos(x.unsqueeze(1), y.unsqueeze(0)) / temp  # noqa: E731
    inputs = [torch.tensor(np.asarray(x), requires_grad=True) for x in (op, oh, ap, ah)]
    zop, zoh, zap, zah = (mlp(x) for x in inputs)
    s = sim(torch.cat((zop, zap)), torch.cat((zoh, zah)))
    c_loss = torch.nn.CrossEntropyLoss()(s, torch.arange(s.size(0)))
    a_loss = (sim(zop, zoh) - sim(zap, zah)).norm(p=2, dim=1).pow(2).mean()
    total = c_loss + 0.05 * a_loss
    total.backward()
    grads = {"inputs": [x.grad.numpy() for x in inputs],
             "dense1": dense1.weight.grad.numpy().T, "dense2": dense2.weight.grad.numpy().T}
    return c_loss.item(), a_loss.item(), grads


@pytest.mark.torch
def test_info_nce_and_alignment_match_the_released_torch_formulas():
    rng = np.random.default_rng(0)
    b, h = 5, 8
    views = [rng.normal(size=(b, h)).astype(np.float32) for _ in range(4)]
    views[3] = views[1] + 0.1 * rng.normal(size=(b, h)).astype(np.float32)  # a near-duplicate view
    head = contrastive.init_head(jax.random.PRNGKey(0), h, 0.5)
    c_want, a_want, g_want = _torch_mabel(*views, head, 0.05)

    def total(head, *v):
        z = [contrastive.pool(head, x) for x in v]
        c, a = contrastive.info_nce(*z, 0.05), alignment.alignment(*z, 0.05)
        return c + 0.05 * a, (c, a)

    (_, (c, a)), grads = jax.value_and_grad(total, argnums=(0, 1, 2, 3, 4), has_aux=True)(
        head, *map(jnp.asarray, views))
    np.testing.assert_allclose(float(c), c_want, rtol=1e-5)
    np.testing.assert_allclose(float(a), a_want, rtol=1e-4)
    assert a_want > 1.0  # the 1/0.05 scale on both similarity matrices: 400x the raw-cosine value
    for got, want in zip(grads[1:], g_want["inputs"]):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-5)
    for name in ("dense1", "dense2"):
        np.testing.assert_allclose(np.asarray(grads[0][name]["kernel"]), g_want[name], rtol=1e-3, atol=1e-5)


def test_alignment_gradient_is_finite_when_the_views_agree():
    """d * d, not norm(d) ** 2: identical original and augmented views give loss 0, gradient 0."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
    value, grad = jax.value_and_grad(alignment.alignment)(x, x + 1.0, x, x + 1.0, 0.05)
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


# ----------------------------------------------------------------------------- untied decoder


@pytest.mark.torch
def test_untied_decoder_trains_its_own_rows_and_exports_tied_back(tiny_bert_dir, tmp_path):
    import torch
    from transformers import BertForMaskedLM as TorchBert

    model, config = convert.load_model(tiny_bert_dir, untie_decoder=True)
    emb = np.asarray(model.word_embeddings())
    np.testing.assert_array_equal(np.asarray(model.head.decoder[...]), emb)  # initialised from the tied head
    rng = np.random.default_rng(2)
    decoder = emb + 0.1 * rng.normal(size=emb.shape).astype(np.float32)
    model.head.decoder[...] = jnp.asarray(decoder)
    model.embeddings.word.embedding[...] = jnp.asarray(0.5 * emb)
    ids = jnp.asarray([[2, 7, 9, 11, 3, 0]], jnp.int32)
    out = model(ids, (ids > 0).astype(jnp.int32))
    want = np.asarray(out.mlm_hidden) @ decoder.T + np.asarray(model.head.bias[...])
    np.testing.assert_allclose(np.asarray(out.logits), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(model.decoder_weight()), decoder)

    export = convert.save_hf(model, config, tmp_path / "hf", tokenizer_src=tiny_bert_dir)
    hf, info = TorchBert.from_pretrained(str(export), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # MABEL's convert_to_hf.py loads the trained decoder into the tied head: it becomes both.
    np.testing.assert_array_equal(hf.bert.embeddings.word_embeddings.weight.detach().numpy(), decoder)
    np.testing.assert_array_equal(hf.cls.predictions.decoder.weight.detach().numpy(), decoder)
    back, _ = convert.load_model(export)
    with torch.no_grad():
        torch_logits = hf.eval()(input_ids=torch.tensor(np.asarray(ids)),
                                 attention_mask=torch.tensor(np.asarray(ids > 0))).logits.numpy()
    np.testing.assert_allclose(np.asarray(back(ids, (ids > 0).astype(jnp.int32)).logits), torch_logits,
                               rtol=1e-4, atol=1e-4)
    again, _ = convert.load_model(export, untie_decoder=True)
    np.testing.assert_array_equal(np.asarray(again.head.decoder[...]), decoder)


def test_nc3_reads_the_untied_decoder_rows(tiny_bert_dir):
    """With an untied decoder, R's W[c] are decoder rows: its gradient reaches the class
    rows of the decoder and no other (the input embeddings get theirs through the features only)."""
    from ncjax import terms
    from ncjax.terms import mlm, nc3

    tok = convert.load_tokenizer(tiny_bert_dir)
    model, config = convert.load_model(tiny_bert_dir, untie_decoder=True)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    class_ids = np.asarray([tok.convert_tokens_to_ids(w) for w in ("he", "she", "his", "her")], np.int32)
    spec = mlm.MaskSpec((0, 1, 2, 3), int(tok.mask_token_id), config.vocab_size, 0.15, 4)
    term = nc3.NC3(nc3.PenaltySpec(alpha=1.0), spec, class_ids, config.hidden_size)
    texts = ["he was good and she was happy", "his mother and her father", "the king was sad"]
    batch = {k: jnp.asarray(v) for k, v in data.tokenize(texts, tok, 12).items()}

    def value(p):
        ctx = terms.Context(nnx.merge(graphdef, p), batch, jnp.int32(0), seed=0, dropout=False, params=p)
        return term(ctx, term.init_state())[0]

    grad = np.asarray(jax.jit(jax.grad(value))(params)["head"]["decoder"])
    touched = np.flatnonzero(np.abs(grad).sum(1))
    # only class rows (a class absent from this batch's inputs has no mean, hence no gradient)
    assert len(touched) >= 3 and set(touched) <= set(class_ids.tolist()), touched


def test_untying_after_loading_an_ncjax_checkpoint(tiny_bert_dir, tmp_path):
    """Checkpoints hold the tied layout; untie_decoder copies the loaded embeddings afterwards."""
    model, config = convert.load_model(tiny_bert_dir)
    convert.save_ncjax(model, config, tmp_path / "ck", tokenizer_src=tiny_bert_dir)
    untied, _ = convert.load_model(tmp_path / "ck", untie_decoder=True)
    assert untied.untied and not model.untied
    np.testing.assert_array_equal(np.asarray(untied.head.decoder[...]), np.asarray(model.word_embeddings()))


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


# ----------------------------------------------------------------------------- the schema


SWAPS = [("he", "she"), ("his", "her"), ("man", "woman")]


def test_augment_swaps_gender_words_and_drops_pairs_without_one():
    got = pairs.augment([("He ran.", "A man ran."), ("It rained.", "Water fell."), ("Rain.", "Her cat.")], SWAPS, "x")
    assert got == [("He ran.", "A man ran.", "She ran.", "A woman ran."),
                   ("Rain.", "Her cat.", "Rain.", "His cat.")]
    with pytest.raises(ValueError) as info:
        pairs.augment([("It rained.", "Water fell.")], SWAPS, "data.path f.csv")
    assert str(info.value) == ("data.path f.csv has no pair with a gender word (of bias-bench's gender attribute "
                               "pairs) to swap; the Mabel schema needs pairs about people with a gender.")


def test_bundled_glue_pairs_are_rte_entailments_and_mrpc_paraphrases_with_a_gender_word():
    raw = pairs.glue_pairs()
    assert len(raw) == 1249 + 2753  # RTE train 'entailment', MSR paraphrase train quality 1
    views = pairs.examples(_data_config("bundled:glue_pairs"), None)
    swaps = data.attribute_pairs("gender")
    assert len(views) == 1356
    assert all(a != o or b != h for o, h, a, b in views)
    assert views == pairs.augment(raw, swaps, "bundled")


def _data_config(path, max_length=16):
    import ml_collections

    return ml_collections.ConfigDict({"path": str(path), "split": "train", "max_length": max_length,
                                      "schema": "mabel"})


def test_mabel_csv_is_read_as_four_views_and_encoded_n_4_l(tiny_bert_dir, tmp_path):
    tok = convert.load_tokenizer(tiny_bert_dir)
    f = tmp_path / "entailment_data.csv"
    f.write_text("orig_sent0,orig_sent1,aug_sent0,aug_sent1\nhe was good,he was happy,she was good,she was happy\n"
                 "the king,the man,the queen,the woman\n")
    views = pairs.examples(_data_config(f), tmp_path)
    assert views == [("he was good", "he was happy", "she was good", "she was happy"),
                     ("the king", "the man", "the queen", "the woman")]
    arrays = pairs.load(_data_config(f, 8), tok, tmp_path)
    assert arrays["input_ids"].shape == arrays["attention_mask"].shape == (2, 4, 8)
    flat = data.tokenize([v for e in views for v in e], tok, 8)
    np.testing.assert_array_equal(arrays["input_ids"].reshape(8, 8), flat["input_ids"])
    assert arrays["input_ids"][0, 2, 1] == tok.convert_tokens_to_ids("she")


def test_a_csv_without_mabels_columns_stops_in_one_sentence(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("premise,hypothesis\nhe ran,he moved\n")
    with pytest.raises(ValueError) as info:
        pairs.examples(_data_config(f), tmp_path)
    assert str(info.value) == (f"data.path {f} has columns premise, hypothesis, but the Mabel schema needs "
                               "orig_sent0, orig_sent1, aug_sent0, aug_sent1 (MABEL's entailment_data.csv), or at "
                               "least orig_sent0 and orig_sent1 to augment.")


def test_pairs_without_a_gender_word_stop_in_one_sentence(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("orig_sent0,orig_sent1\nit rained,water fell\nthe dog ran,an animal moved\n")
    with pytest.raises(ValueError) as info:
        pairs.examples(_data_config(f), tmp_path)
    assert str(info.value) == (f"data.path {f} has no pair with a gender word (of bias-bench's gender attribute "
                               "pairs) to swap; the Mabel schema needs pairs about people with a gender.")
    f.write_text("orig_sent0,orig_sent1\nit rained,water fell\nhe ran,a man moved\n")  # augmented, filtered
    assert pairs.examples(_data_config(f), tmp_path) == [("he ran", "a man moved", "she ran", "a woman moved")]


def test_schema_checks_the_mabel_source_before_reading(tmp_path):
    from ncjax import schemas

    with pytest.raises(FileNotFoundError, match=r"^data.path .*nope.csv does not exist; point data.path at "
                                                r"MABEL's entailment_data.csv"):
        schemas.check(_data_config(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match=r"^data.path 'bundled:snli' names no bundled pair corpus of the Mabel "
                                         r"schema; use bundled:glue_pairs\.$"):
        schemas.check(_data_config("bundled:snli"))
    with pytest.raises(ValueError, match=r"^config data.max_length=2 must be at least 3 for the Mabel schema\.$"):
        schemas.check(_data_config("bundled:glue_pairs", max_length=2))

