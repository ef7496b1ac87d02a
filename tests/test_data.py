"""Data pipeline: sentence splitting, counterfactuals, reading and caching, the sampler, and MLM
masking (checked against its definition in numpy, and across device counts)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ncjax import data, masking, parallel


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


# ----------------------------------------------------------------------------- text


def test_split_sentences():
    text = ('Dr. J. K. Rowling met Mr. Smith at 5 p.m. on Jan. 3.  She said "Hi." Then he left! '
            "Why? He lived in the U.S. Army base. The end")
    assert data.split_sentences(text) == [
        "Dr. J. K. Rowling met Mr. Smith at 5 p.m. on Jan. 3.",
        'She said "Hi."',
        "Then he left!",
        "Why?",
        "He lived in the U.S. Army base.",
        "The end",
    ]
    assert data.split_sentences("   ") == []


def test_counterfactual_two_sided_swaps_words_not_substrings():
    pairs = [("he", "she"), ("him", "her"), ("his", "her"), ("man", "woman"), ("king", "queen")]
    out = data.counterfactual("He told her that the King saw his man, then she left. Theme: Manhattan.", pairs)
    assert out == "She told him that the Queen saw her woman, then he left. Theme: Manhattan."


def test_bundled_attribute_pairs():
    pairs = data.attribute_pairs("gender")
    assert len(pairs) == 57 and ("he", "she") in pairs and ("actor", "actress") in pairs
    with pytest.raises(ValueError, match="no attribute 'age'"):
        data.attribute_pairs("age")


def _spec(path, **kw):
    return data.CorpusSpec(path=str(path), **kw)


def test_read_texts_formats_cda_and_errors(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("\tText\tOther\n0\tHe is a man. She is a woman.\tx\n1\tThe nurse worked.\ty\n")
    assert data.read_texts(_spec(tsv), tmp_path) == ["He is a man.", "She is a woman.", "The nurse worked."]
    assert data.read_texts(_spec(tsv, sentence_split=False), tmp_path)[0] == "He is a man. She is a woman."
    cda = data.read_texts(_spec(tsv, cda="two_sided"), tmp_path)
    assert cda == ["He is a man.", "She is a woman.", "The nurse worked.", "She is a woman.", "He is a man."]

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t}) for t in ["a b.", "c d."]) + "\n")
    assert data.read_texts(_spec(jsonl, text_field="body"), tmp_path) == ["a b.", "c d."]
    txt = tmp_path / "c.txt"
    txt.write_text("one line.\n\nanother one.\n")
    assert data.read_texts(_spec(txt), tmp_path) == ["one line.", "another one."]

    with pytest.raises(FileNotFoundError, match="data.path .*missing.tsv does not exist"):
        data.read_texts(_spec(tmp_path / "missing.tsv"), tmp_path)
    with pytest.raises(ValueError, match="has no column 'Txt'"):
        data.read_texts(_spec(tsv, text_field="Txt"), tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="yields no text"):
        data.read_texts(_spec(empty), tmp_path)
    with pytest.raises(ValueError, match="set data.format"):
        data.read_texts(_spec(tmp_path / "c.xyz"), tmp_path)


@pytest.mark.parametrize("name,digests", [
    ("gap_flipped", ["d4857fd416a16a636ccc74b84041d887df0d2c66b34dec4694222439bd226479"]),
    ("gap", ["b9a01434fcf58d8c2f9bc762480c27e58ce466cf1ffe8b09cfecbc7a20d2d634",
             "2d784f66b390404f554704b9aef6dcde8845e79dda9886b8391cf7e9a24fdb98",
             "1c35e36d5b14f6313ec3f6cd67b275de282595dd59e59390e00cfff9897a6819"]),
    ("wikitext2", ["f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                   "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"]),
])
def test_bundled_corpora_are_the_recorded_files(name, digests):
    import hashlib

    sources = data.resolve_corpus(f"bundled:{name}")
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p, _, _ in sources] == digests
    assert {(fmt, field) for _, fmt, field in sources} == {
        "gap_flipped": {("tsv", "Text")}, "gap": {("tsv", "Text")}, "wikitext2": {("wikitext", "text")}}[name]


def test_wikitext_cleaning_and_several_sources(tmp_path):
    raw = [" \n", " = Heading = \n", " The 1 @,@ 000 well @-@ known <unk> cost 2 @.@ 5 . \n", "\n"]
    assert data.wikitext_paragraphs(raw) == ["The 1,000 well-known [UNK] cost 2.5 ."]
    tokens = tmp_path / "w.tokens"
    tokens.write_text("".join(raw))
    tsv = tmp_path / "c.tsv"
    tsv.write_text("Text\nShe was a nurse.\n")
    spec = data.CorpusSpec(path=f"{tokens}, {tsv}", text_field="Text")
    assert data.read_texts(spec, tmp_path) == ["The 1,000 well-known [UNK] cost 2.5 .", "She was a nurse."]
    with pytest.raises(ValueError, match="data.path 'bundled:nope' names no bundled corpus"):
        data.check_corpus(data.CorpusSpec(path="bundled:nope"))


def test_attended_mask_padding_reproduces_bec(tokenizer):
    clean = data.tokenize(["he was a nurse"], tokenizer, 8)
    bec = data.tokenize(["he was a nurse"], tokenizer, 8, padding="attended_mask")
    real = clean["attention_mask"][0] > 0
    assert not real.all()
    np.testing.assert_array_equal(bec["input_ids"][0, real], clean["input_ids"][0, real])
    assert (bec["input_ids"][0, ~real] == tokenizer.mask_token_id).all()
    assert (bec["attention_mask"] == 1).all()


def test_load_corpus_tokenises_and_caches(tmp_path, tokenizer):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("Text\nhe was a nurse. She was a doctor at the hospital.\n")
    spec = _spec(tsv, max_length=0)
    arrays = data.load_corpus(spec, tokenizer, cache_dir=tmp_path / "cache")
    # auto length: longest sentence has 6 words -> 8 tokens per row
    assert arrays["input_ids"].shape == (2, 8) and arrays["input_ids"].dtype == np.int32
    expected = tokenizer(["he was a nurse.", "She was a doctor at the hospital."], max_length=8,
                         truncation=True, padding="max_length")
    np.testing.assert_array_equal(arrays["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(arrays["attention_mask"], expected["attention_mask"])
    cached = list((tmp_path / "cache").glob("tokens-*.npz"))
    assert len(cached) == 1
    # A second call reads the cache (the source is no longer consulted) and returns the same arrays.
    cached[0].chmod(0o444)
    again = data.load_corpus(spec, tokenizer, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again["input_ids"], arrays["input_ids"])
    # Any change of spec or file content is a new cache entry.
    data.load_corpus(_spec(tsv, max_length=16), tokenizer, cache_dir=tmp_path / "cache")
    tsv.write_text("Text\nhe was a man.\n")
    data.load_corpus(spec, tokenizer, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("tokens-*.npz"))) == 3


# ----------------------------------------------------------------------------- sampler


def test_sampler_epochs_shards_and_remainder():
    n, b = 23, 8
    s = data.Sampler(n, b, seed=3)
    assert s.steps_per_epoch == 2
    epoch0 = np.concatenate([s.indices(0), s.indices(1)])
    assert len(set(epoch0.tolist())) == 16 and set(epoch0.tolist()) <= set(range(n))
    np.testing.assert_array_equal(epoch0, s.epoch_order(0)[:16])
    assert not np.array_equal(s.indices(2), s.indices(0))  # epoch 1 is reshuffled
    np.testing.assert_array_equal(data.Sampler(n, b, seed=3).indices(5), s.indices(5))  # state = position only
    # Process shards are the contiguous slices of the global batch, in process order.
    shards = [data.Sampler(n, b, seed=3, process_index=i, process_count=4).indices(3) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(shards), s.indices(3))

    padded = data.Sampler(n, b, seed=3, drop_remainder=False)
    assert padded.steps_per_epoch == 3
    last = padded.indices(2)
    assert (last == -1).sum() == 1
    full = np.concatenate([padded.indices(i) for i in range(3)])
    assert sorted(full[full >= 0].tolist()) == list(range(n))

    with pytest.raises(ValueError, match="fewer than one batch"):
        data.Sampler(5, 8, seed=0)
    with pytest.raises(ValueError, match="not divisible by the number of processes"):
        data.Sampler(50, 8, seed=0, process_count=3)


def test_gather_batch_padding_rows():
    arrays = {"input_ids": np.arange(12, dtype=np.int32).reshape(3, 4) + 5,
              "attention_mask": np.ones((3, 4), np.int32)}
    out = data.gather_batch(arrays, np.array([2, -1, 0]), pad_id=0)
    np.testing.assert_array_equal(out["input_ids"], [[13, 14, 15, 16], [0, 0, 0, 0], [5, 6, 7, 8]])
    np.testing.assert_array_equal(out["attention_mask"][1], [0, 0, 0, 0])


# ----------------------------------------------------------------------------- masking

SPECIALS = (0, 2, 3, 4)  # [PAD] [CLS] [SEP] [MASK] of the tiny vocabulary; [UNK] = 1 stays maskable
MASK_ID, VOCAB = 4, 54


def _batch(rng, b, length):
    lengths = rng.integers(3, length + 1, size=b)
    ids = rng.integers(5, VOCAB, size=(b, length)).astype(np.int32)
    att = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 2
    ids[np.arange(b), lengths - 1] = 3
    ids[att == 0] = 0
    return ids, att


@functools.partial(jax.jit, static_argnames=("p", "cap"))
def _mask(key, ids, att, p=0.15, cap=20):
    return masking.mask_tokens(key, jnp.asarray(ids), jnp.asarray(att), special_ids=SPECIALS, mask_id=MASK_ID,
                               vocab_size=VOCAB, probability=p, max_predictions=cap)


def test_mask_tokens_follows_the_bert_recipe():
    rng = np.random.default_rng(0)
    ids, att = _batch(rng, 256, 64)
    out = jax.tree.map(np.asarray, _mask(jax.random.PRNGKey(7), ids, att, cap=32))
    pos, w, labels, masked = out["positions"], out["weights"], out["labels"], out["input_ids"]
    rows = np.arange(ids.shape[0])[:, None]
    chosen = np.zeros(ids.shape, bool)
    chosen[np.broadcast_to(rows, pos.shape)[w > 0], pos[w > 0]] = True
    candidates = (att > 0) & ~np.isin(ids, SPECIALS)
    assert not (chosen & ~candidates).any(), "a special token or padding was selected"
    np.testing.assert_array_equal(labels, np.take_along_axis(ids, pos, axis=1))
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert len(np.unique(pos[w > 0] + 1000 * np.broadcast_to(rows, pos.shape)[w > 0])) == int(w.sum())
    rate = chosen.sum() / candidates.sum()
    assert abs(rate - 0.15) < 0.01, rate
    n = chosen.sum()
    to_mask = (masked[chosen] == MASK_ID).sum() / n
    kept = (masked[chosen] == ids[chosen]).sum() / n
    assert abs(to_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03, (to_mask, kept)  # the rest: random ids
    # Same key -> same masks; another step's key -> different masks.
    again = _mask(jax.random.PRNGKey(7), ids, att, cap=32)
    np.testing.assert_array_equal(np.asarray(again["input_ids"]), masked)
    other = _mask(jax.random.fold_in(jax.random.PRNGKey(7), 1), ids, att, cap=32)
    assert not np.array_equal(np.asarray(other["positions"]), pos)


def test_mask_tokens_cap_keeps_smallest_draws():
    rng = np.random.default_rng(1)
    ids, att = _batch(rng, 16, 32)
    full = jax.tree.map(np.asarray, _mask(jax.random.PRNGKey(3), ids, att, p=0.9, cap=32))
    capped = jax.tree.map(np.asarray, _mask(jax.random.PRNGKey(3), ids, att, p=0.9, cap=4))
    assert capped["weights"].sum(axis=1).max() <= 4
    for r in range(16):
        sel_full = set(full["positions"][r][full["weights"][r] > 0].tolist())
        sel_cap = set(capped["positions"][r][capped["weights"][r] > 0].tolist())
        assert sel_cap <= sel_full and len(sel_cap) == min(4, len(sel_full))
    assert masking.default_max_predictions(128, 0.15) == 36
    assert masking.default_max_predictions(256, 0.15) >= 0.15 * 256


def test_masking_is_identical_across_device_counts():
    """Masks drawn inside a jitted function with the batch sharded over 8 devices or on 1."""
    rng = np.random.default_rng(2)
    ids, att = _batch(rng, 16, 24)
    results = []
    for n in (8, 1):
        mesh = parallel.make_mesh(n)
        sharding = NamedSharding(mesh, P("data"))
        f = jax.jit(lambda k, i, a: _mask(k, i, a), in_shardings=(None, sharding, sharding))  # noqa: B023
        key = jax.random.fold_in(jax.random.PRNGKey(42), 5)
        out = f(key, jax.device_put(ids, sharding), jax.device_put(att, sharding))
        results.append(jax.tree.map(np.asarray, out))
    for other in results[1:]:
        for k in results[0]:
            np.testing.assert_array_equal(results[0][k], other[k])
