"""`evaluate`: run benchmarks from the registry on one model and return (and optionally write) the results.

The results dict (JSON layout, stable so runs can be compared by script):
    model, backend, settings,
    stereoset.{gender,profession,race,religion,overall}.{SS,LMS,ICAT,count}
    crows.{<bias_type>...,overall}.{metric,stereo,antistereo,n,neutral}   (+ crows_pll, same layout)
    seat.<test>.{effect_size,p_value}, seat.avg_abs_effect_size
    becpro.{mean_association.<person_gender>.<profession_group>, gap.<profession_group>, gap.overall, count}
    winobias-probe.{type1,type2}.{pro_acc,anti_acc,gap}
    glue.<task>.<metric>, glue.average                       (fine-tuning benchmarks; see their modules)
    coref.{type1,type2}.{pro,anti}.{acc,f1}, coref.tpr1, coref.tpr2, coref.gap.{m_f1,f_f1,bias}, coref.selected_epoch
    bios.{acc,acc_m,acc_f,tpr_gap,tpr_rms,per_profession,setting}
    seconds.{<benchmark>..., total}
    incomplete, failed.{benchmark,error}, not_run      (only when a benchmark failed: see `evaluate`)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ncjax import files
from ncjax.bench import registry
from ncjax.bench.report import write_json
from ncjax.bench.scorer import BACKENDS, Scorer, load_scorer

logger = logging.getLogger(__name__)

BENCHMARKS = registry.default()
DATA_DIR = files.resource_path("bench")
parse_benchmarks = registry.parse_benchmarks


class IncompleteSuiteError(RuntimeError):
    """A benchmark failed: the results of those that finished were written, marked incomplete.
    `results` holds them."""

    def __init__(self, message: str, results: dict[str, Any]):
        super().__init__(message)
        self.results = results


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def evaluate(
    model: str | Path | Scorer,
    benchmarks: str | Sequence[str] = BENCHMARKS,
    backend: str = "jax",
    batch_size: int = 64,
    data_dir: str | Path | None = None,
    output: str | Path | None = None,
    *,
    limit: int | None = None,
    workdir: str | Path | None = None,
    per_example: str | Path | None = None,
    init_missing_head: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Scores `model` on the chosen benchmarks; writes `output` atomically as JSON when given.

    model: a Hugging Face masked-LM directory, or a ready `Scorer` (then backend/batch_size are
      taken from it). data_dir: holds stereoset/, crows_pairs/, seat/, bec_pro/, winobias/ as in
      the bundled `ncjax/resources/bench` (the default). limit: score only the first N examples
      of each file or split (SEAT: of each set) for a quick look; the numbers are then not
      comparable (0 or None: all). workdir: where fine-tuning benchmarks keep their resumable run directories
      (default: a temporary directory, removed afterwards). per_example: a JSON Lines file that
      gets every example's score for every benchmark (one object per line, `benchmark` first).
    options: each benchmark's keywords (`registry.options()`: stereoset_file, crows_pll,
      seat_tests, n_samples, seed, becpro_padding, winobias_splits, ...).
    Scoring rules for each benchmark are in its module docstring.

    Before the model is loaded, every output path is checked writable; before the first benchmark
    is scored, every masked-LM benchmark's data is read and tokenised with the model's tokenizer
    and checked against the model (lengths, vocabulary). A benchmark that fails while running
    stops the suite: the finished benchmarks are still written to `output` (and `per_example`),
    with `"incomplete": true`, `failed` ({benchmark, error}) and `not_run`, and
    IncompleteSuiteError is raised. An interrupt writes nothing.
    """
    t_start = time.perf_counter()
    names = parse_benchmarks(benchmarks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit {limit!r} must be a whole number of examples >= 0 (0 or None for all).")
    limit = limit or None
    opts = registry.resolve_options(options)
    files.check_outputs({"output": output, "per_example": per_example})
    if workdir is not None:
        files.check_directory(workdir, "workdir")
    data = Path(data_dir) if data_dir is not None else DATA_DIR
    bench = registry.registry()
    for name in names:  # fail on bad options and missing data before spending time on the model
        if bench[name].check is not None:
            bench[name].check(opts)
        for p in registry.data_paths(bench[name], data, opts):
            if not p.exists():
                raise FileNotFoundError(f"Data for {name} not found at {p}; pass --data-dir with the benchmark files.")
    if isinstance(model, Scorer):
        scorer, model_name = model, model.source
    else:
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        scorer, model_name = None, str(model)
    settings: dict[str, Any] = {"benchmarks": names, "data_dir": str(data), "limit": limit,
                                "init_missing_head": init_missing_head}
    for o in registry.options():
        value = opts[o.name]
        settings[o.settings_key] = list(value) if isinstance(value, tuple) else value
    for b in bench.values():
        if b.data_option:
            settings[b.data_option] = str(registry.data_paths(b, data, opts)[0])

    def get_scorer() -> Scorer:
        return load_scorer(model, backend, batch_size, init_missing_head=init_missing_head, seed=opts["seed"])

    records: list[dict[str, Any]] | None = [] if per_example is not None else None
    ctx = registry.Context(data_dir=data, options=opts, limit=limit, progress=None, model_source=model_name,
                           workdir=Path(workdir) if workdir is not None else None, load_scorer=get_scorer,
                           examples=records, _scorer=scorer)
    if any(bench[n].kind == "mlm" for n in names):
        scorer = ctx.scorer
        for name in names:  # every benchmark's data against the tokenizer, before scoring the first
            if bench[name].inputs is not None:
                try:
                    scorer.check_inputs(bench[name].inputs(ctx))
                except (ValueError, FileNotFoundError) as e:
                    raise type(e)(f"{name}: {e}") from e
    settings["batch_size"] = scorer.batch_size if scorer is not None else batch_size
    settings["length_multiple"] = scorer.length_multiple if scorer is not None else None
    backend_name = scorer.backend if scorer is not None else backend
    results: dict[str, Any] = {"model": model_name, "backend": backend_name, "settings": settings}
    seconds: dict[str, float] = {}
    from tqdm.auto import tqdm

    failed: dict[str, str] | None = None
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        kept = len(records) if records is not None else 0
        try:
            with tqdm(desc=name, total=0, unit="seq", disable=not progress, leave=True) as bar:
                ctx.progress = bar
                results.update(bench[name].run(ctx))
        except Exception as e:  # noqa: BLE001  (any failure: the finished benchmarks are kept)
            if records is not None:
                del records[kept:]  # a half-run benchmark's records are not results
            failed = {"benchmark": name, "error": _first_line(e)}
            results.update(incomplete=True, failed=failed, not_run=names[i + 1:])
            logger.error("%s failed: %s", name, failed["error"])
            break
        seconds[name] = time.perf_counter() - t0
        logger.info("%s done in %.1f s", name, seconds[name])
    seconds["total"] = time.perf_counter() - t_start
    results["seconds"] = seconds
    if per_example is not None:
        # strict JSON Lines: a NaN score (a degenerate model) is null, never a lost file
        files.write_text(per_example, "".join(json.dumps(files.finite(r), allow_nan=False) + "\n" for r in records))
    if output is not None:
        write_json(output, results)
    if failed is not None:
        done = ", ".join(names[: names.index(failed["benchmark"])]) or "none"
        saved = f"{output} holds the finished ones ({done}), marked incomplete" if output is not None else \
            f"finished: {done}"
        raise IncompleteSuiteError(f"benchmark {failed['benchmark']} failed ({failed['error'].rstrip('.')}); "
                                   f"{saved}.", results)
    return results
