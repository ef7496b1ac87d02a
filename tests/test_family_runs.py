"""DistilBERT and ALBERT through the whole pipeline, as tests/test_roberta.py runs the RoBERTa
fixture: a random-initialised transformers masked LM of the family (tests/conftest.py
`HF_CONFIGS`) saved with a tokenizer of the family's kind, then `:tiny` training, NC measurement
(`launch/measure_collapse.py`) and the benchmark suite on both backends, which must agree."""

import json
import re
import string
from pathlib import Path

import pytest

from conftest import FIXTURES, build_hf_mlm, measure_gender, scores_close, tiny_family_run
from ncjax import bench
from ncjax.bench.scorer import load_scorer

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]
# The text the tokenizers are built from: the gender sentences and the bundled gender word lists.
TEXTS = [FIXTURES / "gender_lines.txt"] + [
    ROOT / "ncjax/resources/words" / f for f in
    ("gnglove/female_word_file.txt", "gnglove/male_word_file.txt", "adept/female.txt", "adept/male.txt")]


def _words(split_punctuation: bool = False) -> list[str]:
    """The lower-cased words of TEXTS, split at whitespace (and around punctuation, as WordPiece's
    pre-tokenizer does, with `split_punctuation`)."""
    text = " ".join(p.read_text(encoding="utf-8").lower() for p in TEXTS)
    return sorted(set(re.findall(r"\w+|[^\w\s]", text) if split_punctuation else text.split()))


def _wordpiece_tokenizer(out: Path):
    """DistilBERT's tokenizer: an uncased WordPiece vocabulary (BERT's specials, then every word of
    TEXTS, then single characters and their '##' continuations, so no word is unknown)."""
    import transformers

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | set("".join(_words())))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(
        _words(split_punctuation=True) + chars + ["##" + c for c in chars]))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = transformers.DistilBertTokenizer(vocab=str(out / "vocab.txt"))
    tok.save_pretrained(str(out))
    return tok


def _unigram_tokenizer(out: Path):
    """ALBERT's tokenizer: transformers' AlbertTokenizer (the SentencePiece Unigram model with
    ALBERT's normalisation, `▁` word-start marker and [CLS]/[SEP] template) over a vocabulary
    written here, since nothing can be downloaded and the sentencepiece trainer is not a
    dependency (a Unigram model trained by `tokenizers` on this little text splits even 'she'):
    ALBERT's specials (ids 0-4 as in albert-base-v2), `▁word` for every word of TEXTS
    (log-probability -2) and single characters with and without `▁` (-8), so known words are one
    piece and any other word splits into a known word and characters, or characters."""
    import transformers

    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | set("".join(_words())))
    pieces = {"▁" + w: -2.0 for w in _words()}
    for c in chars:
        pieces.setdefault("▁" + c, -8.0)
        pieces.setdefault(c, -8.0)
    vocab = [(s, 0.0) for s in ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")] + [("▁", -10.0)] + list(pieces.items())
    tok = transformers.AlbertTokenizer(vocab=vocab)
    tok.save_pretrained(str(out))
    return tok


TOKENIZERS = {"distilbert": _wordpiece_tokenizer, "albert": _unigram_tokenizer}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def saved(request, tmp_path_factory):
    """(family, a directory holding a tiny random masked LM of the family and its tokenizer)."""
    name = request.param
    out = tmp_path_factory.mktemp(name)
    tok = TOKENIZERS[name](out)
    # the vocabulary padded past the tokenizer, as checkpoints often are; positions for the
    # benchmark sentences, whose unknown words split into characters; ALBERT: 2 layers sharing
    # one parameter layer (compiling fewer layers keeps the runs short)
    shared = dict(num_hidden_layers=2, num_hidden_groups=1, inner_group_num=1) if name == "albert" else {}
    hf = build_hf_mlm(name, vocab_size=len(tok) + 3, pad_token_id=tok.pad_token_id, max_position_embeddings=256,
                      **shared)
    hf.save_pretrained(str(out))
    return name, out


def test_tokenizer_pieces_follow_the_family(saved):
    from ncjax import words
    from ncjax.convert import load_tokenizer

    name, path = saved
    tok = load_tokenizer(path)
    assert tok.convert_ids_to_tokens(tok("She was a nurse.")["input_ids"]) == {
        "distilbert": ["[CLS]", "she", "was", "a", "nurse", ".", "[SEP]"],
        "albert": ["[CLS]", "▁she", "▁was", "▁a", "▁nurse", ".", "[SEP]"]}[name]
    res = words.resolve(words.bundled("gender-gnglove"), tok)
    assert res.ids and not res.dropped
    marker = {"distilbert": "", "albert": "▁"}[name]  # a word after a space: one piece, so marked
    assert all(k.piece == marker + k.word for k in res.kept if k.word.isalpha())


def test_nc_features_must_have_the_decoder_rows_width():
    from ncjax.classes import feature_size
    from ncjax.model import BertConfig

    albert = BertConfig(model_type="albert", hidden_size=32, embedding_size=16, num_attention_heads=4)
    assert feature_size(albert, "mlm_transform", "penalty.features") == albert.head_size == 16
    with pytest.raises(ValueError, match="penalty.features is 'last_hidden', but this albert's last layer has "
                                         "hidden_size 32 and its decoder rows have embedding_size 16"):
        feature_size(albert, "last_hidden", "penalty.features")
    same = BertConfig(model_type="albert", hidden_size=32, embedding_size=32, num_attention_heads=4)
    distil = BertConfig(model_type="distilbert", hidden_size=32, num_attention_heads=4)
    assert feature_size(same, "last_hidden", "x") == feature_size(distil, "last_hidden", "x") == 32
    assert distil.head_size == 32


def test_head_source_must_have_the_head_width(tiny_bert_dir):
    from ncjax.model import BertConfig
    from ncjax.train import _replace_head

    albert = BertConfig(model_type="albert", vocab_size=54, hidden_size=32, embedding_size=16, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden/head/vocab size 32/32/54, but model.path has 32/16/54"):
        _replace_head(None, str(tiny_bert_dir), albert)  # the BERT fixture's head is 32 wide


def test_tiny_training_measurement_and_evaluation(saved, tmp_path):
    name, path = saved
    # ALBERT's last layer (hidden 32) is not in the decoder rows' space (embedding 16)
    export, corpus = tiny_family_run(path, tmp_path, {"penalty.features": "mlm_transform"} if name == "albert" else None)
    cfg = json.loads((export / "config.json").read_text())
    arch = {"distilbert": "DistilBertForMaskedLM", "albert": "AlbertForMaskedLM"}[name]
    assert cfg["model_type"] == name and cfg["architectures"] == [arch]

    measure_gender(export, corpus, tmp_path)

    results = {}
    for backend in ("jax", "torch"):
        scorer = load_scorer(export, backend, batch_size=4)
        # the two benchmarks whose queries depend most on the tokenizer (StereoSet's filler pieces,
        # CrowS-Pairs' aligned spans)
        results[backend] = bench.evaluate(scorer, "stereoset,crows", limit=2, progress=False)
    for key in ("stereoset", "crows"):
        assert scores_close(results["jax"][key], results["torch"][key]), key
