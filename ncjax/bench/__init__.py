"""Bias benchmarks for masked LMs, scored as bias-bench scores them, on a jax or torch backend.

    from ncjax.bench import evaluate
    results = evaluate("path/to/hf_dir", "stereoset,crows,seat,becpro,winobias-probe", backend="jax")

One module per benchmark (`stereoset`, `crows`, `seat`, `becpro`, `winobias` (the MLM probe,
`winobias-probe`); each docstring states the exact scoring rules and ends with its `BENCHMARK`
declaration), `registry` (the one list of benchmarks, their options and report rows), `scorer`
(the backend interface and the jax backend), `eager` (the torch backend), `suite` (`evaluate`)
and `report` (JSON and markdown).
Fine-tuning benchmarks: `glue`, `coref` (WinoBias coreference through a GAP-trained resolver;
`conll` reads CoNLL-2012 training data) and `bios` (Bias-in-Bios), on `heads` (task heads),
`finetune` (the jitted fine-tune / predict loop) and `runs` (encoder, settings, run directories).
"""

from ncjax.bench.report import markdown, write_json
from ncjax.bench.eager import TorchScorer
from ncjax.bench.scorer import JaxScorer, MaskedQuery, Scorer, load_scorer
from ncjax.bench.suite import BENCHMARKS, DATA_DIR, IncompleteSuiteError, evaluate, parse_benchmarks

__all__ = [
    "BENCHMARKS",
    "DATA_DIR",
    "IncompleteSuiteError",
    "JaxScorer",
    "MaskedQuery",
    "Scorer",
    "TorchScorer",
    "evaluate",
    "load_scorer",
    "markdown",
    "parse_benchmarks",
    "write_json",
]
