"""Loss terms against independent re-derivations: ASE's orthogonality and EWC (value and
gradient, numpy), the released and textbook Fisher (PyTorch on the same weights, the released
loop), the gender direction (PyTorch), the ASE schema (hand-made cases) and fixed MLM labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ncjax import convert, data, schemas
from ncjax.terms import ewc, mlm, orthogonal


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    model, config = convert.load_model(tiny_bert_dir)
    graphdef, state = nnx.split(model)
    return graphdef, jax.device_get(nnx.to_pure_dict(state)), config, convert.load_tokenizer(tiny_bert_dir)


def test_orthogonality_value_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 5, 4)).astype(np.float32)
    m = (rng.random((3, 5)) < 0.5).astype(np.float32)
    g = rng.normal(size=4).astype(np.float32)
    g /= np.linalg.norm(g)
    dots = np.einsum("blh,h->bl", m[..., None].astype(np.float64) * h, g)
    want = np.abs(dots).sum()
    value, grad = jax.value_and_grad(orthogonal.orthogonality)(jnp.asarray(h), jnp.asarray(m), jnp.asarray(g))
    np.testing.assert_allclose(float(value), want, rtol=1e-6)
    # d/dh |<m h, g>| = sign(<m h, g>) m g
    np.testing.assert_allclose(np.asarray(grad), np.sign(dots)[..., None] * m[..., None] * g, rtol=1e-6, atol=1e-7)


def test_ewc_penalty_value_and_gradient_match_numpy():
    rng = np.random.default_rng(1)
    shapes = {"a": (3, 2), "b": {"c": (4,)}}
    tree = lambda: jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,  # noqa: E731
                                is_leaf=lambda x: isinstance(x, tuple))
    p, a = tree(), tree()
    f = jax.tree.map(np.abs, tree())
    want = sum(float(np.sum(fi.astype(np.float64) * (pi - ai) ** 2)) for pi, fi, ai in
               zip(jax.tree.leaves(p), jax.tree.leaves(f), jax.tree.leaves(a)))
    value, grad = jax.value_and_grad(ewc.penalty)(p, f, a)
    np.testing.assert_allclose(float(value), want, rtol=1e-6)
    for gi, pi, fi, ai in zip(jax.tree.leaves(grad), jax.tree.leaves(p), jax.tree.leaves(f), jax.tree.leaves(a)):
        np.testing.assert_allclose(np.asarray(gi), 2 * fi * (pi - ai), rtol=1e-5, atol=1e-7)


def _torch_model(tiny_bert_dir):
    import transformers

    return transformers.BertForMaskedLM.from_pretrained(str(tiny_bert_dir)).eval()


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["released", "textbook"])
def test_fisher_matches_the_released_torch_loop(kind, tiny, tiny_bert_dir):
    """The released loop: no zero_grad between lines, F += p.grad ** 2 / N (textbook: zeroed)."""
    import torch

    graphdef, params, _, tok = tiny
    lines = ["he was a nurse at the hospital .", "she was a doctor .", "the man worked with her mother ."]
    enc = tok(lines, padding="longest", return_token_type_ids=False)
    ids, mask = np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)
    ours = ewc.fisher(graphdef, params, ids, mask, kind)

    model = _torch_model(tiny_bert_dir)
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for line in lines:
        x = torch.tensor([tok.encode(line)])
        if kind == "textbook":
            model.zero_grad()
        model(x, labels=x).loss.backward()
        for n, p in model.named_parameters():
            fisher[n] += p.grad ** 2 / len(lines)
    from ncjax.convert import hf_to_params  # the same name map the converter uses

    theirs = hf_to_params({n: f.numpy() for n, f in fisher.items()}, tiny[2], source="fisher")
    flat_ours = {tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): v
                 for path, v in jax.tree_util.tree_flatten_with_path(ours)[0]}
    flat_theirs = {tuple(k): v for k, v in theirs.items()}
    assert flat_ours.keys() == flat_theirs.keys()
    scale = max(float(np.abs(v).max()) for v in flat_theirs.values())
    for k in flat_ours:
        np.testing.assert_allclose(np.asarray(flat_ours[k]), np.asarray(flat_theirs[k]), rtol=2e-4, atol=2e-6 * scale,
                                   err_msg=str(k))


@pytest.mark.torch
def test_gender_direction_matches_torch(tiny, tiny_bert_dir):
    """Each side's words joined into one sentence, last-layer states of every piece summed (in
    chunks of the model's positions, which the tiny model needs), male minus female, unit norm."""
    import torch

    graphdef, params, config, tok = tiny
    g = orthogonal.gender_direction(graphdef, params, tok, "gender-gnglove", config.max_position_embeddings)
    model = _torch_model(tiny_bert_dir)
    chunk = config.max_position_embeddings - 2
    sums = []
    for rel in ("gnglove/male_word_file.txt", "gnglove/female_word_file.txt"):
        words = [w.strip() for w in data.resource_path("words", *rel.split("/")).read_text().splitlines() if w.strip()]
        pieces = tok.encode(" ".join(words), add_special_tokens=False)
        assert len(pieces) > chunk  # several chunks: the chunking is exercised
        total = torch.zeros(config.hidden_size, dtype=torch.float64)
        for i in range(0, len(pieces), chunk):
            x = torch.tensor([[tok.cls_token_id, *pieces[i:i + chunk], tok.sep_token_id]])
            with torch.no_grad():
                total += model(x, output_hidden_states=True).hidden_states[-1][0, 1:-1].sum(0).double()
        sums.append(total.numpy())
    want = sums[0] - sums[1]
    np.testing.assert_allclose(g, want / np.linalg.norm(want), atol=1e-5)


def test_ase_schema_masks_swaps_and_marks_neutral_words(tiny):
    tok = tiny[3]
    line = "12 [The nurse] worked at the hospital because [she] was good."
    assert schemas.mask_pronoun(line) == ("The nurse worked at the hospital because [MASK] was good.", "she")
    assert schemas.mask_pronoun("1 [He] and [she] worked.") is None  # two pronouns: skipped, as released
    examples = schemas.ase_examples([line, "no pronoun here"], data.attribute_pairs())
    assert examples == [("The nurse worked at the hospital because [MASK] was good.", "she"),
                        ("The nurse worked at the hospital because [MASK] was good.", "he")]
    with pytest.raises(ValueError, match=r"^data.path x has no line with exactly one bracketed pronoun .*\.$"):
        schemas.ase_examples(["[The nurse] worked.", "1 [He] and [she] worked."], data.attribute_pairs(),
                             source="data.path x")
    arrays = schemas.encode_ase(examples, tok, 12, ["hospital", "nurse", "the hospital"])
    ids = tok.encode(examples[0][0], add_special_tokens=False)
    assert arrays["input_ids"].shape == (2, 12) and (arrays["input_ids"][0, :len(ids)] == ids).all()
    at = ids.index(tok.mask_token_id)
    assert arrays["mlm_labels"][0, at] == tok.convert_tokens_to_ids("she")
    assert arrays["mlm_labels"][1, at] == tok.convert_tokens_to_ids("he")
    assert (np.delete(arrays["mlm_labels"][0], at) == -100).all()
    # first occurrence of each neutral word (and of the two-piece 'the hospital')
    want = np.zeros(12, np.float32)
    want[[ids.index(tok.convert_tokens_to_ids(w)) for w in ("hospital", "nurse")]] = 1
    the = ids.index(tok.convert_tokens_to_ids("the"))
    if ids[the + 1] == tok.convert_tokens_to_ids("hospital"):
        want[the] = 1
    np.testing.assert_array_equal(arrays["neutral_mask"][0], want)
    assert (arrays["attention_mask"][0, len(ids):] == 0).all()


def test_given_masks_pick_the_labelled_positions():
    labels = jnp.asarray([[-100, 7, -100, -100], [-100, -100, -100, -100], [3, -100, 9, -100]])
    ids = jnp.arange(12).reshape(3, 4)
    m = mlm.given_masks(ids, labels, 2)
    np.testing.assert_array_equal(m["positions"], [[1, 0], [0, 1], [0, 2]])
    np.testing.assert_array_equal(m["weights"], [[1, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(m["labels"][m["weights"] > 0], [7, 3, 9])
    assert m["input_ids"] is ids


def test_fisher_lines_format_the_released_way():
    pro = ["1 [The developer] argued with the designer because [he] did not like the design.",
           "2 The developer argued with [the designer] because [her] idea cannot be implemented."]
    assert schemas.fisher_lines(pro, pro) == [
        "man argued with the designer because [MASK] did not like the design.",
        "woman argued with the designer because [MASK] did not like the design.",
        "The developer argued with woman because [MASK] idea cannot be implemented.",
        "The developer argued with man because [MASK] idea cannot be implemented.",
    ]


def test_terms_sharing_a_forward_pass_run_the_model_once(tiny):
    """MLM, NC3 and orthogonality read one cached masked forward pass per step."""
    from ncjax import terms
    from ncjax.terms import nc3

    graphdef, params, config, _ = tiny
    calls = []

    class Counting:
        def __init__(self, model):
            self.model = model

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return self.model(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.model, name)

    spec = mlm.MaskSpec((0, 2, 3, 4), 4, config.vocab_size, 0.3, 4)
    loss_terms = [mlm.MLM(spec), nc3.NC3(nc3.PenaltySpec(), spec, np.array([5, 6, 7, 8], np.int32), config.hidden_size),
                  orthogonal.Orthogonal(spec, np.ones(config.hidden_size, np.float32) / np.sqrt(config.hidden_size))]
    rng = np.random.default_rng(0)
    batch = {"input_ids": jnp.asarray(rng.integers(5, 54, (2, 8)), jnp.int32),
             "attention_mask": jnp.ones((2, 8), jnp.int32), "neutral_mask": jnp.ones((2, 8), jnp.float32)}

    def total(p):
        ctx = terms.Context(Counting(nnx.merge(graphdef, p)), batch, jnp.int32(0), seed=0, dropout=False, params=p)
        return sum(t.weight * t(ctx, t.init_state())[0] for t in loss_terms)

    value = jax.jit(total)(params)
    assert np.isfinite(float(value)) and len(calls) == 1
