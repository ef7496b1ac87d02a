"""Every recipe in configs/ builds, and its :tiny variant trains end to end: the loss goes down,
1 and 8 simulated devices give the same per-term losses, and the export loads in transformers.

The runs read small corpora of the tiny fixture's vocabulary instead of the bundled ones (the
recipes' own data paths are exercised by tests/test_data.py and tests/test_terms.py)."""

import importlib

import numpy as np
import pytest

from ncjax import logs

# The kill/resume machinery of the train tests, and its compilation cache for the subprocesses.
from test_train import _copy, _state, kill_after_checkpoint_then_rerun  # noqa: F401

RECIPES = ("bert_nc3", "cda_nc3", "dropout_nc3", "mlm_nc3", "ase_nc3", "mabel_nc3")
# bert_nc3:tiny trains in tests/test_train.py (1 vs 8 devices included), ase_nc3:tiny in the ASE
# tests below. CDA and Dropout compile the very step of bert_nc3 (same terms and schema, other
# data and dropout rates), so their 1-device rerun would repeat that comparison: 8 devices only.
TRAINED_HERE = {"cda_nc3": False, "dropout_nc3": False, "mlm_nc3": True, "mabel_nc3": True}
STEPS = 4
# float32 all-reduce over 8 devices vs one local sum, through a few AdamW steps
LOSS_RTOL = 2e-4


def recipe_module(name):
    return importlib.import_module(f"configs.{name}")


def write_sequences(path, n=64, seed=0):
    rng = np.random.default_rng(seed)
    subjects = ["he", "she", "the man", "the woman", "the king", "the queen", "his father", "her mother"]
    predicates = ["worked at the hospital", "was a nurse", "was a doctor", "was an engineer", "was happy",
                  "was sad", "was good", "and her mother worked", "worked with him"]
    rows = [f"{rng.choice(subjects).capitalize()} {rng.choice(predicates)}." for _ in range(n)]
    path.write_text("Text\n" + "\n".join(rows) + "\n")


def write_winobias(path, n=40, seed=0):
    """WinoBias-format lines (number, bracketed entity and pronoun) in the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    jobs = ["nurse", "doctor", "engineer", "king", "queen"]
    pronouns = ["he", "she", "his", "her", "him"]
    lines = [f"{i + 1} [The {rng.choice(jobs)}] worked with the {rng.choice(jobs)} at the hospital and "
             f"[{rng.choice(pronouns)}] was {rng.choice(['good', 'bad', 'happy', 'sad'])}." for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def write_mabel(path, n=48, seed=0):
    """MABEL's entailment_data.csv layout (orig_sent0, orig_sent1, aug_sent0, aug_sent1) in the
    tiny vocabulary, the augmented views made by the bundled gender swaps."""
    from ncjax import data
    from ncjax.text import counterfactual

    rng = np.random.default_rng(seed)
    subjects = ["he", "she", "the man", "the woman", "the king", "the queen", "his father", "her mother"]
    predicates = ["worked at the hospital", "was a nurse", "was a doctor", "was happy", "was sad", "was good"]
    swaps = data.attribute_pairs("gender")
    rows = []
    for _ in range(n):
        subject = rng.choice(subjects)
        premise = f"{subject.capitalize()} {rng.choice(predicates)} and {rng.choice(predicates)}."
        hypothesis = f"{subject.capitalize()} {rng.choice(predicates)}."
        rows.append(",".join([premise, hypothesis, counterfactual(premise, swaps), counterfactual(hypothesis, swaps)]))
    path.write_text("orig_sent0,orig_sent1,aug_sent0,aug_sent1\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe_data")
    write_sequences(d / "seq.tsv")
    write_winobias(d / "wino.txt")
    write_mabel(d / "mabel.csv")
    (d / "neutral.txt").write_text("nurse\ndoctor\tengineer\nhospital\n")
    return d


def tiny_config(name, corpora, tiny_bert_dir, **overrides):
    c = recipe_module(name).get_config("tiny")
    c.model.path = str(tiny_bert_dir)
    if c.data.schema == "ase":
        c.data.path = str(corpora / "wino.txt")
        c.data.neutral_words = str(corpora / "neutral.txt")
    elif c.data.schema == "mabel":
        c.data.path = str(corpora / "mabel.csv")
    else:
        c.data.path = str(corpora / "seq.tsv")
    c.data.cache_dir = str(corpora / "cache")
    c.train.num_steps = STEPS
    c.checkpoint.every_steps = STEPS
    c.log.progress = "off"
    c.log.tensorboard = False
    return _copy(c, **overrides)


@pytest.mark.parametrize("name", RECIPES)
def test_every_variant_builds_and_passes_the_checks(name):
    from configs import common
    from ncjax.train import check_config

    module = recipe_module(name)
    assert "python launch/train.py --config configs/" + name in module.__doc__
    for variant in ("paper", *common.SHARED_VARIANTS, *getattr(module, "OWN", {})):
        c = module.get_config(variant)
        check_config(c)
        assert (c.penalty.alpha == 0) == (variant == "no_nc3"), (name, variant)
    with pytest.raises(ValueError, match=f"configs/{name}.py has no variant 'nope'"):
        module.get_config("nope")
    c = module.get_config()
    c.loss.terms = ("mlm", "nc4")
    with pytest.raises(ValueError, match=r"^config loss.terms names 'nc4', which is no module of ncjax/terms; "
                                         r"use one of alignment, contrastive, ewc, mlm, nc3, orthogonal\.$"):
        check_config(c)


def _records(workdir):
    return logs.read_metrics(workdir / "metrics.jsonl")


def check_trained(name, workdir):
    """The run logged every term of the recipe, its MLM loss went down, the total is the
    weighted sum of the terms, and the export loads in transformers."""
    records = _records(workdir)
    config = recipe_module(name).get_config("tiny")
    keys = sorted(k for k in records[0] if k.startswith("loss/"))
    assert keys == sorted(f"loss/{t}" for t in config.loss.terms), keys
    mlm = [r["loss/mlm"] for r in records]
    assert np.mean(mlm[-2:]) < np.mean(mlm[:2]), mlm
    weights = {"mlm": config.mlm.weight, "nc3": config.penalty.alpha, "orthogonal": config.orthogonal.weight,
               "ewc": config.ewc.weight, "contrastive": config.contrastive.weight,
               "alignment": config.alignment.weight}
    np.testing.assert_allclose([r["loss"] for r in records],
                               [sum(weights[k[5:]] * r[k] for k in keys) for r in records], rtol=1e-5)
    pytest.importorskip("torch")
    from transformers import AutoModelForMaskedLM

    _, info = AutoModelForMaskedLM.from_pretrained(str(workdir / "export" / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def check_one_device_matches(eight_dir, one_dir):
    eight, one = _records(eight_dir), _records(one_dir)
    assert [r["step"] for r in one] == [r["step"] for r in eight]
    for key in [k for k in eight[0] if k == "loss" or k.startswith("loss/")]:
        np.testing.assert_allclose([r[key] for r in one], [r[key] for r in eight], rtol=LOSS_RTOL, atol=1e-6,
                                   err_msg=key)


@pytest.mark.parametrize("name", TRAINED_HERE)
def test_tiny_recipe_trains_on_one_and_eight_devices(name, corpora, tiny_bert_dir, tmp_path):
    from ncjax.train import train_and_evaluate

    result = train_and_evaluate(tiny_config(name, corpora, tiny_bert_dir), tmp_path / "eight")
    assert result["status"] == "completed"
    check_trained(name, tmp_path / "eight")
    if not TRAINED_HERE[name]:
        return
    train_and_evaluate(tiny_config(name, corpora, tiny_bert_dir, **{"parallel.num_devices": 1}), tmp_path / "one")
    check_one_device_matches(tmp_path / "eight", tmp_path / "one")


# ----------------------------------------------------------------------------- ASE (term state)

ASE_STEPS, ASE_EVERY = 8, 4


@pytest.fixture(scope="module")
def ase_config(corpora, tiny_bert_dir):
    return tiny_config("ase_nc3", corpora, tiny_bert_dir, **{"train.num_steps": ASE_STEPS,
                                                            "checkpoint.every_steps": ASE_EVERY})


@pytest.fixture(scope="module")
def ase_reference(ase_config, tmp_path_factory):
    from ncjax.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("ase_reference")
    assert train_and_evaluate(ase_config, workdir)["status"] == "completed"
    return workdir


def test_ase_tiny_trains_on_one_and_eight_devices(ase_config, ase_reference, tmp_path):
    from ncjax.train import train_and_evaluate

    check_trained("ase_nc3", ase_reference)
    one = ase_config.copy_and_resolve_references()
    one.parallel.num_devices = 1
    train_and_evaluate(one, tmp_path / "one")
    check_one_device_matches(ase_reference, tmp_path / "one")


def test_ase_sigkill_then_rerun_is_bit_identical(ase_config, ase_reference, tmp_path):
    """EWC's Fisher and anchor and the NC3 statistics live in the checkpoint: the rerun after a
    SIGKILL continues the identical trajectory."""
    _, state = _state(ase_reference)
    assert {"ewc", "nc3"} <= set(state["terms"]) and {"fisher", "anchor"} == set(state["terms"]["ewc"])
    kill_after_checkpoint_then_rerun(ase_config, tmp_path / "killed", ase_reference, ASE_EVERY)


def test_ase_corpus_without_a_maskable_pronoun_stops_before_compute(ase_config, corpora, tmp_path):
    from ncjax.train import train_and_evaluate

    bad = tmp_path / "no_pronoun.txt"
    bad.write_text("1 [The nurse] worked at the hospital.\n2 [He] and [she] worked.\n")
    c = ase_config.copy_and_resolve_references()
    c.data.path = str(bad)
    with pytest.raises(ValueError) as info:
        train_and_evaluate(c, tmp_path / "w")
    message = str(info.value)
    assert message == (f"data.path {bad} has no line with exactly one bracketed pronoun ([he], [she], [him], [his], "
                       "[her]) to mask; the ASE schema needs WinoBias-format sentences."), message
    assert not (tmp_path / "w" / "checkpoints").exists()
    c.data.path = str(corpora / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"^data.path .*nope.txt does not exist; point data.path at "
                                                r"WinoBias-format text files"):
        train_and_evaluate(c, tmp_path / "w2")


def test_resuming_another_recipes_checkpoint_fails_in_one_sentence(ase_reference, corpora, tiny_bert_dir, tmp_path):
    import shutil

    from ncjax.train import train_and_evaluate

    workdir = tmp_path / "mixed"
    shutil.copytree(ase_reference / "checkpoints", workdir / "checkpoints")
    # no config.json: the config recorded in the checkpoint is compared (before any compute)
    with pytest.raises(ValueError, match=r"^.*mixed holds a run of a different config \(.* and \d+ more\); rerun "
                                         r"with the config recorded in .*checkpoints \(config.json is missing\) "
                                         r"or use a new --workdir\.$"):
        train_and_evaluate(tiny_config("bert_nc3", corpora, tiny_bert_dir), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(
        p.name for p in (ase_reference / "checkpoints").iterdir())


# ----------------------------------------------------------------------------- Mabel (four views)


def test_mabel_bad_inputs_stop_before_compute(corpora, tiny_bert_dir, tmp_path):
    from ncjax.terms import alignment, contrastive
    from ncjax.train import train_and_evaluate

    c = tiny_config("mabel_nc3", corpora, tiny_bert_dir)
    bad = tmp_path / "columns.csv"
    bad.write_text("sentence1,sentence2\nHe was good.,He was happy.\n")
    c.data.path = str(bad)
    with pytest.raises(ValueError, match=r"^data.path .*columns.csv has columns sentence1, sentence2, but the Mabel "
                                         r"schema needs orig_sent0, orig_sent1, aug_sent0, aug_sent1"):
        train_and_evaluate(c, tmp_path / "w1")
    neutral = tmp_path / "neutral.csv"
    neutral.write_text("orig_sent0,orig_sent1\nThe nurse was good.,The doctor was happy.\n")
    c.data.path = str(neutral)
    with pytest.raises(ValueError, match=r"^data.path .*neutral.csv has no pair with a gender word"):
        train_and_evaluate(c, tmp_path / "w2")
    assert not (tmp_path / "w1" / "checkpoints").exists() and not (tmp_path / "w2" / "checkpoints").exists()
    c = tiny_config("mabel_nc3", corpora, tiny_bert_dir)
    c.data.schema = "sequences"
    with pytest.raises(ValueError, match=r"^loss term 'contrastive' reads the four views of data.schema='mabel', "
                                         r"not 'sequences'; set data.schema='mabel'\.$"):
        contrastive.build(c, None)
    c = tiny_config("mabel_nc3", corpora, tiny_bert_dir, **{"contrastive.weight": 0.0})
    with pytest.raises(ValueError, match=r"^loss term 'alignment' reads the sentence-embedding head of the "
                                         r"'contrastive' term"):
        alignment.build(c, None)
