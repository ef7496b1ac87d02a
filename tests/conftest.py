"""Test set-up: 8 simulated CPU devices, set before JAX initialises its backends."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TINY_BERT = FIXTURES / "tiny_bert_mlm"


@pytest.fixture(scope="module")
def compilation_cache_env(tmp_path_factory):
    """A persistent compilation cache for one test module: runs that compile the same programs
    (same shapes, device count and settings) load them instead of recompiling. Yields the
    environment variables that give subprocesses the same cache."""
    import jax

    try:  # private, but the only way to re-read the setting once JAX has looked at it
        from jax._src.compilation_cache import reset_cache
    except ImportError:  # pragma: no cover - a future JAX: the runs simply compile each time
        def reset_cache():
            return None

    path = str(tmp_path_factory.mktemp("jax_cache"))
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: jax.config.values[n] for n in names}
    for n, v in zip(names, (path, 0.0, 0)):
        jax.config.update(n, v)
    reset_cache()  # the cache may have been checked (and found unset) by earlier tests
    yield {n.upper(): str(v) for n, v in zip(names, (path, 0, 0))}
    for n, v in saved.items():
        jax.config.update(n, v)
    reset_cache()


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
