"""Word-set resolution with the real bert-base-uncased vocabulary (shipped with the MiniLM encoder)."""

import hashlib
from importlib import resources

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from ncjax import words
from ncjax.convert import minilm_dir

# sha256 of ",".join(sorted ids) of the released Fairness-NC index files
# (adept_word_indices_gender_1.json, ase_word_indices_gender.json): the union of their
# female and male ids. first_piece must reproduce them exactly.
RELEASED_IDS_SHA256 = {
    "gender-adept": (287, "5eee6437ded20ed9ec7fcbcf66a002d06e7eabfe37231fb74f8c9278b16df94b"),
    "gender-gnglove": (271, "319bf2577ecabfce342fda3666a93403e8e416a33c52f5e74f430519bb04ccd5"),
}

# Bundled files are byte copies of the sources listed in ncjax/resources/README.md.
BUNDLED_SHA256 = {
    "adept/female.txt": "8805f760fd422b2474b7f37260f573fcdfe036811cc8a3132c6a2c7eb4bc787d",
    "adept/male.txt": "b2a42c07ad083cc75e38498b126d29833e3baf647a339890d2fc002ad241b435",
    "gnglove/female_word_file.txt": "bd30fc80fd5ead4165b72fcc37b75e9993a7a272d8669d5fc1f124987b6936eb",
    "gnglove/male_word_file.txt": "8f3418658e0ec696c2fe1c9bd193f406aef3c37045ccba1a63bded69c5b7f77b",
}


@pytest.fixture(scope="module")
def uncased():
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


@pytest.fixture(scope="module")
def vocab():
    lines = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {tok: i for i, tok in enumerate(lines)}


def test_bundled_files_are_byte_copies():
    root = resources.files("ncjax") / "resources" / "words"
    for rel, digest in BUNDLED_SHA256.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel


@pytest.mark.parametrize("name", ["gender-adept", "gender-gnglove"])
def test_first_piece_reproduces_released_ids(uncased, name):
    res = words.resolve(words.bundled(name), uncased, "first_piece")
    count, digest = RELEASED_IDS_SHA256[name]
    assert len(res.ids) == count
    assert hashlib.sha256(",".join(map(str, res.ids)).encode()).hexdigest() == digest
    assert not res.dropped
    # the generic pieces first_piece lets in, with the words that bring them
    generic = {k.word: k.piece for k in res.partial}
    assert generic["androgen"] == "and" and generic["toque"] == "to" and generic["bloke"] == "b"
    assert {"and", "to", "b", "house"} <= set(res.generic_pieces)
    shared = {c.piece: c.words for c in res.collisions}
    assert shared["men"] == {"female": ("menopause",), "male": ("men", "mentleman", "menservants")}
    assert "menopause->men" in res.summary()


@pytest.mark.parametrize("name", ["gender-adept", "gender-gnglove"])
def test_whole_word_keeps_exactly_the_single_token_words(uncased, vocab, name):
    ws = words.bundled(name)
    res = words.resolve(ws, uncased, "whole_word")
    all_words = {w for side in ws.sides.values() for w in side}
    # independent: a lower-cased word that is itself a vocabulary entry is one token
    want = sorted({vocab[w.lower()] for w in all_words if w.lower() in vocab})
    assert list(res.ids) == want
    assert all(k.whole for k in res.kept) and not res.partial
    assert {d.word for d in res.dropped} == {w for w in all_words if w.lower() not in vocab}
    assert all(d.reason == "multi_piece" for d in res.dropped)
    assert res.to_dict()["num_ids"] == len(want)


def test_tokenizers_library_tokenizer_gives_the_same_ids(uncased):
    raw = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    a = words.resolve(words.bundled("gender-adept"), uncased)
    b = words.resolve(words.bundled("gender-adept"), raw)
    assert a.ids == b.ids


def test_user_word_lists(tmp_path, uncased):
    (tmp_path / "pairs.tsv").write_text("he\tshe\n# comment\nking\tqueen\n\nactor\tactress\n")
    (tmp_path / "single.txt").write_text("nurse\nengineer\nnurse\n")
    (tmp_path / "f.txt").write_text("she\nher\n")
    (tmp_path / "m.txt").write_text("he\nhim\n")
    pairs = words.load_word_set(tmp_path / "pairs.tsv")
    assert pairs.sides == {"side1": ("he", "king", "actor"), "side2": ("she", "queen", "actress")}
    single = words.load_word_set(str(tmp_path / "single.txt"))
    assert single.sides == {"words": ("nurse", "engineer")}
    two = words.load_word_set(f"{tmp_path / 'f.txt'},{tmp_path / 'm.txt'}")
    assert two.sides == {"f": ("she", "her"), "m": ("he", "him")}
    res = words.resolve(pairs, uncased, "whole_word")
    assert res.ids == tuple(sorted(uncased.convert_tokens_to_ids(["he", "she", "king", "queen", "actor", "actress"])))


def test_errors(tmp_path, uncased):
    (tmp_path / "one.txt").write_text("nurse\n")
    with pytest.raises(ValueError, match="resolves to 1 token id"):
        words.resolve(words.load_word_set(tmp_path / "one.txt"), uncased)
    (tmp_path / "mixed.txt").write_text("he\tshe\nking\n")
    with pytest.raises(ValueError, match="one word, or two words"):
        words.load_word_set(tmp_path / "mixed.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="holds no words"):
        words.load_word_set(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        words.load_word_set(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="unknown word policy"):
        words.resolve(words.bundled("gender-adept"), uncased, "all_pieces")
    with pytest.raises(ValueError, match="unknown bundled word set"):
        words.bundled("gender-x")


class _MarkerTokenizer:
    """A SentencePiece-like tokenizer: some words split into a bare `▁` and the word's piece."""

    vocab = {"<unk>": 0, "[MASK]": 1, "▁": 2, "▁she": 3, "▁he": 4, "hers": 5, "his": 6, "▁count": 7, "ess": 8}
    splits = {"she": ["▁she"], "he": ["▁he"], "hers": ["▁", "hers"], "his": ["▁", "his"],
              "countess": ["▁count", "ess"]}
    unk_token_id = 0
    all_special_ids = [0, 1]

    def tokenize(self, text):
        return self.splits[text.strip()]

    def convert_tokens_to_ids(self, pieces):
        return [self.vocab[p] for p in pieces]


def test_a_bare_word_start_marker_is_not_a_class():
    ws = words.WordSet("t", {"female": ("she", "hers", "countess"), "male": ("he", "his")})
    res = words.resolve(ws, _MarkerTokenizer(), "first_piece")
    assert res.ids == (3, 4, 5, 6, 7)  # hers and his keep their own pieces, not the shared "▁" (2)
    assert {k.word: k.piece for k in res.kept} == {"she": "▁she", "hers": "hers", "countess": "▁count",
                                                   "he": "▁he", "his": "his"}
    assert not res.collisions
    whole = words.resolve(ws, _MarkerTokenizer(), "whole_word")
    assert whole.ids == (3, 4) and {d.word for d in whole.dropped} == {"hers", "countess", "his"}
