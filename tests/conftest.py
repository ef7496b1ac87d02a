"""Test set-up: 8 simulated CPU devices, set before JAX initialises its backends."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the session, subprocesses included (they inherit the
# environment): the tests compile the same tiny programs many times over, and the command-line
# tools would otherwise cache into the user's ~/.cache.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ncjax-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TINY_BERT = FIXTURES / "tiny_bert_mlm"

VOCAB, PAD = 99, 1

# Tiny transformers masked-LM configs, one per family (hidden 32, 4 heads): (config class, model
# class, config fields).
HF_CONFIGS = {
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, type_vocab_size=1, pad_token_id=PAD, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, hidden_act="gelu")),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM", dict(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=40,
        pad_token_id=PAD, activation="gelu")),
    # 4 layers from 2 groups of 2 shared layers each, embeddings of 16 projected to 32
    "albert": ("AlbertConfig", "AlbertForMaskedLM", dict(
        vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2,
        inner_group_num=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=40,
        pad_token_id=PAD, hidden_act="gelu_new")),
}


def build_hf_mlm(family: str, seed: int = 0, **overrides):
    """A random-initialised transformers masked LM of `family` (`HF_CONFIGS`, with `overrides`
    replacing config fields), in eval mode, with a non-zero prediction bias so that conversions
    which drop it are caught. Needs torch."""
    import torch
    import transformers

    cfg_cls, model_cls, kwargs = HF_CONFIGS[family]
    torch.manual_seed(seed)
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**kwargs, **overrides})).eval()
    with torch.no_grad():
        hf.get_output_embeddings().bias.normal_()
    return hf


@pytest.fixture(scope="session")
def tiny_bert_dir() -> Path:
    """A 2-layer BERT (hidden 32, vocab 54) saved by transformers 4.57 in every layout."""
    return TINY_BERT


def pytest_collection_modifyitems(config, items):
    """Tests marked `torch` are skipped with a clear reason when torch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        skip = pytest.mark.skip(reason="needs the torch extra: pip install torch==2.13.0 && pip install -e '.[torch]'")
        for item in items:
            if "torch" in item.keywords:
                item.add_marker(skip)


def scores_close(a, b, rtol: float = 1e-4) -> bool:
    """Whether two benchmark results (nested dicts) have the same keys and equal values, floats
    within `rtol` relative (1 absolute below 1): the two scoring backends' agreement."""
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(scores_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rtol * max(1.0, abs(a))
    return a == b


REPO = Path(__file__).resolve().parents[1]


def load_module(path: Path, name: str):
    """A config or launch script of the checkout, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_family_run(model_path: Path, tmp_path: Path, overrides: dict | None = None) -> tuple[Path, Path]:
    """Trains configs/bert_nc3.py:tiny for 6 steps from `model_path` on a 12-sentence corpus of
    gendered subjects, with `overrides` ({dotted config key: value}); checks that every loss is
    finite and NC3 was active at the end. Returns (the run's Hugging Face export, the corpus)."""
    import numpy as np

    from ncjax import logs
    from ncjax.train import train_and_evaluate

    corpus = tmp_path / "c.tsv"
    corpus.write_text("Text\n" + "\n".join(
        f"{s} {p}." for s in ("He", "She", "The man", "The woman") for p in ("was a nurse", "was a doctor",
                                                                               "worked at the hospital")) + "\n")
    c = load_module(REPO / "configs" / "bert_nc3.py", "bert_nc3").get_config("tiny")
    c.model.path, c.data.path = str(model_path), str(corpus)
    c.data.cache_dir = str(tmp_path / "cache")
    c.train.num_steps, c.checkpoint.every_steps, c.log.progress = 6, 6, "off"
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value
    assert train_and_evaluate(c, tmp_path / "run")["status"] == "completed"
    records = logs.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(np.isfinite(r["loss"]) for r in records) and records[-1]["nc3_valid"] and records[-1]["loss/nc3"] > 0
    return tmp_path / "run" / "export" / "hf", corpus


def measure_gender(export: Path, corpus: Path, tmp_path: Path) -> dict:
    """`launch/measure_collapse.py` on `export` over `corpus` with the GN-GloVe gender classes;
    checks it succeeds with at least 2 classes and a finite NC1; returns its JSON result."""
    import json

    import numpy as np

    out = tmp_path / "nc.json"
    cli = load_module(REPO / "launch" / "measure_collapse.py", "measure_collapse")
    assert cli.main(["--model", str(export), "--corpus", str(corpus), "--classes", "gender-gnglove",
                     "--batch-size", "8", "--output", str(out)]) == 0
    (res,) = json.loads(out.read_text())
    assert res["num_classes"] >= 2 and np.isfinite(res["nc1_cdnv"])
    return res
