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
