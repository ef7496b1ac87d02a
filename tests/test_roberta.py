"""A RoBERTa through the whole pipeline (tests/fixtures/tiny_roberta_mlm: byte-level BPE, vocabulary
padded past the tokenizer): word resolution, StereoSet's leading space, :tiny training, NC
measurement and the benchmark suite on both backends."""

import json
from pathlib import Path

import pytest

from conftest import measure_gender, scores_close, tiny_family_run
from ncjax import bench, words
from ncjax.bench import stereoset
from ncjax.bench.scorer import JaxScorer, load_scorer
from ncjax.convert import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_roberta_mlm"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(FIXTURE)


def test_words_resolve_to_the_piece_after_a_space(tok):
    res = words.resolve(words.WordSet("w", {"f": ("she", "countrywoman"), "m": ("he",)}), tok)
    kept = {k.word: k for k in res.kept}
    assert kept["she"].piece == "Ġshe" and kept["she"].whole
    assert kept["she"].token_id == tok.convert_tokens_to_ids("Ġshe") != tok.convert_tokens_to_ids("she")
    assert kept["countrywoman"].piece == "Ġcountry" and not kept["countrywoman"].whole
    assert words.resolve(words.bundled("gender-gnglove"), tok, "whole_word").ids  # Ġ-marked single tokens


def test_stereoset_fillers_get_the_leading_space_as_bias_bench_gives_roberta(tok):
    ex = stereoset.Example("e", "gender", "man", "the man was BLANK.", (
        stereoset.Candidate("s", "the man was nurse.", "stereotype"),
        stereoset.Candidate("a", "the man was she.", "anti-stereotype"),
        stereoset.Candidate("u", "the man was he.", "unrelated")), "test")
    queries, owners = stereoset.build_queries([ex], tok, leading_space=True)
    pieces = tok.encode(" nurse", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(pieces) == ["Ġn", "ur", "se"]
    # bias-bench: context.replace("BLANK", decode(pieces[:i]) + mask), the prefix keeping its space
    for q, prefix in zip(queries, ("", " n", " nur")):
        assert q.token_ids == tuple(tok(f"the man was {prefix}<mask>.")["input_ids"])
    assert [q.targets[0] for q in queries[:3]] == pieces and owners[:3] == ["s"] * 3
    plain, _ = stereoset.build_queries([ex], tok)
    assert plain[0].targets[0] == tok.convert_tokens_to_ids("n")  # without the space: another id


def test_scorer_accepts_a_padded_vocabulary_only(tok):
    model, config = load_model(FIXTURE)
    assert (len(tok), config.vocab_size, config.model_type) == (1000, 1008, "roberta")
    scorer = JaxScorer(model, config, tok, batch_size=2)
    assert scorer.max_length == 256 and scorer.family.tokenization.stereoset_leading_space
    import dataclasses

    small = dataclasses.replace(config, vocab_size=999)
    with pytest.raises(ValueError, match="1000 tokens but the model's vocab_size is 999; use the tokenizer"):
        JaxScorer(model, small, tok)


def test_tiny_training_measurement_and_evaluation(tmp_path, capsys):
    export, corpus = tiny_family_run(FIXTURE, tmp_path)
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["model_type"] == "roberta" and cfg["architectures"] == ["RobertaForMaskedLM"]

    res = measure_gender(export, corpus, tmp_path)
    assert all(p.startswith("Ġ") for p in res["word_set"]["generic_pieces"])

    results = {}
    for backend in ("jax", "torch"):
        if backend == "torch":
            pytest.importorskip("torch")
        scorer = load_scorer(export, backend, batch_size=4)
        results[backend] = bench.evaluate(scorer, "stereoset,crows,becpro,winobias-probe", limit=2, progress=False)
    for key in ("stereoset", "crows", "becpro", "winobias-probe"):
        assert scores_close(results["jax"][key], results["torch"][key]), key
