"""The one list of benchmarks: what each one reads, its options, how it runs and how it reports.

Each benchmark module ends with `BENCHMARK = Benchmark(...)`. `suite.evaluate`, `report.rows` and
`launch/evaluate.py` iterate over `registry()` (built here, in `MODULES` order), so adding a
benchmark means adding its module name to `MODULES` and nothing else.

A benchmark's `run(ctx)` returns {results key: value} (usually one key, its name) and may append
per-example records to `ctx.examples`. Two kinds exist: `mlm` benchmarks score a masked LM
through `ctx.scorer` (loaded once, lazily); `finetune` benchmarks train task heads on the encoder
at `ctx.model_source` inside a run directory under `ctx.workdir`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path
from typing import Any, Callable, Sequence

MODULES = ("stereoset", "crows", "seat", "becpro", "winobias", "glue", "coref", "bios")
KINDS = ("mlm", "finetune")


@dataclasses.dataclass(frozen=True)
class Option:
    """One keyword of `evaluate(...)` and one CLI flag.

    name: the keyword (and settings key unless `setting` says otherwise); default: its value when
    not given; parse: CLI string -> value; flag: the CLI flag (default --name with dashes);
    choices: allowed values (checked before any compute)."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    flag: str | None = None
    setting: str | None = None
    choices: tuple[Any, ...] | None = None
    switch: bool = False  # a store_true flag

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def settings_key(self) -> str:
        return self.setting or self.name


def _whole(text: str, low: int, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = low - 1
    if n < low:
        raise ValueError(f"{text!r} is not a {what}")
    return n


def positive_int(text: str) -> int:
    """'12' -> 12; anything that is not a whole number >= 1 is a ValueError."""
    return _whole(text, 1, "positive whole number")


def natural_int(text: str) -> int:
    """'0' -> 0; anything that is not a whole number >= 0 is a ValueError."""
    return _whole(text, 0, "whole number >= 0")


def positive_float(text: str) -> float:
    """'2e-5' -> 2e-05; anything that is not a finite number > 0 is a ValueError."""
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if not 0.0 < x < float("inf"):
        raise ValueError(f"{text!r} is not a positive number")
    return x


def comma_list(text: str) -> tuple[str, ...]:
    """'a,b,,c' -> ('a', 'b', 'c')."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclasses.dataclass
class Context:
    """What a benchmark's `run` reads. `scorer` loads the masked-LM scorer on first use."""

    data_dir: Path
    options: dict[str, Any]
    limit: int | None
    progress: Any
    model_source: str
    workdir: Path | None
    load_scorer: Callable[[], Any]
    examples: list[dict[str, Any]] | None = None
    _scorer: Any = None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. the encoder, loaded once

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            self._scorer = self.load_scorer()
        return self._scorer

    def data_path(self, benchmark: str) -> Path:
        """The benchmark's (first) data path: its data option when set, else under data_dir."""
        return data_paths(registry()[benchmark], self.data_dir, self.options)[0]

    def scored(self, key: str, run: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """{key: run(*args, limit=, progress=, records=, **kwargs)}, its per-example records kept under key."""
        records: list[dict[str, Any]] = []
        out = run(*args, limit=self.limit, progress=self.progress, records=records, **kwargs)
        self.record(key, records)
        return {key: out}

    def record(self, benchmark: str, records: Sequence[dict[str, Any]]) -> None:
        """Adds per-example records (each gets `benchmark` first) when --per-example is on."""
        if self.examples is not None:
            self.examples.extend({"benchmark": benchmark, **r} for r in records)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """name: the CLI/results name; title: the report's benchmark column; kind: 'mlm' or 'finetune';
    data: files or directories under the data directory that must exist before anything runs
    (`finetune` benchmarks check their own, optional, data); options: its keywords;
    run: ctx -> {results key: value}; rows: results -> [(title, subset, scores)] report rows;
    inputs: ctx -> the token sequences it will score (raises on data the tokenizer cannot take)."""

    name: str
    title: str
    kind: str
    data: tuple[str, ...]
    run: Callable[[Context], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[tuple[str, str, str]]]
    options: tuple[Option, ...] = ()
    default: bool = True  # part of the default selection (the quick bias suite)
    data_option: str | None = None  # an option that, when set, is the data path instead of data[0]
    check: Callable[[dict[str, Any]], Any] | None = None  # validates its option values before any compute
    # mlm benchmarks: ctx -> every token sequence the model will be given (the data read and
    # tokenised with the scorer's tokenizer); the suite checks them all before scoring the first
    inputs: Callable[[Context], Sequence[Sequence[int]]] | None = None


@functools.cache
def registry() -> dict[str, Benchmark]:
    """{name: Benchmark} in `MODULES` order (imported on first use, so modules can import this one)."""
    out: dict[str, Benchmark] = {}
    for mod in MODULES:
        b = importlib.import_module(f"ncjax.bench.{mod}").BENCHMARK
        if b.kind not in KINDS:
            raise ValueError(f"ncjax.bench.{mod}: kind {b.kind!r} is not one of {KINDS}.")
        if b.name in out:
            raise ValueError(f"ncjax.bench.{mod}: benchmark name {b.name!r} is registered twice.")
        out[b.name] = b
    return out


def names() -> tuple[str, ...]:
    return tuple(registry())


def default() -> tuple[str, ...]:
    """The default selection: the masked-LM bias suite (fine-tuning benchmarks are asked for by name)."""
    return tuple(n for n, b in registry().items() if b.default)


RENAMED = {"winobias": "the MLM probe is now 'winobias-probe'; the coreference benchmark is 'coref'"}


def options() -> list[Option]:
    """Every benchmark's options, each name once (benchmarks may share one, e.g. seed)."""
    seen: dict[str, Option] = {}
    for b in registry().values():
        for o in b.options:
            seen.setdefault(o.name, o)
    return list(seen.values())


def parse_benchmarks(benchmarks: str | Sequence[str]) -> list[str]:
    """'stereoset,crows' or a sequence -> validated names in the given order ('all': every one)."""
    names = [b.strip() for b in benchmarks.split(",")] if isinstance(benchmarks, str) else list(benchmarks)
    names = [b for b in names if b]
    known = registry()
    if names == ["all"]:
        return list(known)
    for b in names:
        if b not in known:
            hint = f" ({RENAMED[b]})" if b in RENAMED else ""
            raise ValueError(f"Unknown benchmark {b!r}{hint}; choose from {', '.join(known)} or all.")
    if not names:
        raise ValueError(f"No benchmark given; choose from {', '.join(known)} or all.")
    return list(dict.fromkeys(names))


def resolve_options(given: dict[str, Any]) -> dict[str, Any]:
    """Keyword values -> every option's value (defaults filled in), validated before any compute."""
    known = {o.name: o for o in options()}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"evaluate() got unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    out = {}
    for name, o in known.items():
        value = given.get(name, o.default)
        if isinstance(value, str) and o.parse is not str:
            value = o.parse(value)
        if o.choices is not None and value not in o.choices:
            raise ValueError(f"Unknown {o.cli_flag[2:]} value {value!r}; use one of {', '.join(map(str, o.choices))}.")
        out[name] = value
    return out


def data_paths(b: Benchmark, data_dir: Path, opts: dict[str, Any]) -> list[Path]:
    """The files/directories benchmark `b` reads, resolved against data_dir and its data option."""
    paths = [data_dir / d for d in b.data]
    if b.data_option and opts.get(b.data_option):
        paths[0] = Path(opts[b.data_option])
    return paths


def fmt(x: Any, digits: int = 2) -> str:
    """A report cell: floats to `digits` decimals, None as an en dash."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def data_file(name: str) -> str:
    """Benchmark `name`'s (first) data path relative to a data directory, e.g. for reference scripts."""
    return registry()[name].data[0]
