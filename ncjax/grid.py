"""The experiment grid: recipe x {baseline, +NC3} x seed, every cell trained from one base model,
exported, evaluated and measured, then aggregated into one report.

A grid is described by an ml_collections config (`configs/reproduce.py`). Its cells are
independent jobs with their own directories under the grid's work directory:

    DIR/grid.json                      the grid config that created DIR (a rerun must match it)
    DIR/cells/000-base/                cell 0: the base model itself (evaluated and measured only)
    DIR/cells/NNN-<recipe>-<arm>-s<seed>/
        train/                         the training run (ncjax.train; resumes where it stopped)
        eval.json                      the benchmark results of the exported model
        nc.json                        NC metrics per class set ({name: metrics})
        cell.json                      written last: the cell is complete
    DIR/report.{md,json}, DIR/*.png    `aggregate` (reads only the files above)

Every file is written atomically, so a killed cell resumes from its last complete stage (and
training from its last checkpoint); a finished cell is skipped. `run_cell(config, DIR, k)` runs
one cell, so a cluster array job (one task per k) runs the grid on shared storage and a final
`aggregate(DIR)` writes the report.

The two arms of a recipe differ only by `arms.baseline_overrides` (by default the NC3 weight
set to 0); everything else, the seed included, is shared, so the NC3 effect is paired by seed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from ncjax import logs
from ncjax.resume import flatten

log = logging.getLogger(__name__)

ARMS = ("baseline", "nc3")
ROOT = Path(__file__).resolve().parents[1]  # configs/ paths in a grid config are relative to the checkout


@dataclasses.dataclass(frozen=True)
class Cell:
    """One job of the grid. index 0 is the base model; recipe/arm/seed are None there."""

    index: int
    recipe: str | None = None
    arm: str | None = None
    seed: int | None = None

    @property
    def name(self) -> str:
        if self.recipe is None:
            return f"{self.index:03d}-base"
        return f"{self.index:03d}-{self.recipe}-{self.arm}-s{self.seed}"


def split_list(value: str, key: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; raises ValueError naming the config key when empty."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise ValueError(f"grid config {key} is empty; give a comma-separated list.")
    return items


# numeric grid fields and their smallest allowed value (0 means "all" / "no cap" where allowed)
_LOWEST = {"evaluate.batch_size": 1, "evaluate.limit": 0, "evaluate.seed": 0, "measure.batch_size": 1,
           "measure.max_tokens": 0, "measure.min_count": 1, "measure.label_shift": 0, "measure.seed": 0}


def check_ranges(grid: Any) -> None:
    """Raises ValueError naming the grid config field whose number is out of range (before any work)."""
    for key, low in _LOWEST.items():
        section, name = key.split(".")
        value = grid[section][name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"grid config {key}={value!r} must be a whole number >= {low}.")
    if grid.measure.label_shift > 1:
        raise ValueError(f"grid config measure.label_shift={grid.measure.label_shift} must be 0 or 1.")


def cells(grid: Any) -> list[Cell]:
    """The grid's cells in their fixed order: the base model, then recipe x arm x seed."""
    check_ranges(grid)
    recipes = split_list(grid.recipes, "recipes")
    for r in recipes:
        if r not in grid.recipe:
            raise ValueError(f"grid config recipes names {r!r}, which is not in recipe "
                             f"(known: {', '.join(sorted(grid.recipe))}); add recipe.{r} or fix the name.")
    arms = split_list(grid.arms.run, "arms.run")
    for a in arms:
        if a not in ARMS:
            raise ValueError(f"grid config arms.run names {a!r}; use {', '.join(ARMS)}.")
    try:
        seeds = [int(s) for s in split_list(grid.seeds, "seeds")]
    except ValueError:
        raise ValueError(f"grid config seeds={grid.seeds!r} must be comma-separated integers.") from None
    if min(seeds) < 0:
        raise ValueError(f"grid config seeds={grid.seeds!r} must be whole numbers >= 0.")
    out = [Cell(0)]
    for r in recipes:
        for a in arms:
            for s in seeds:
                out.append(Cell(len(out), r, a, s))
    return out


# ----------------------------------------------------------------------------- configs


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """'configs/x.py[:variant]' (relative to the working directory or the ncjax checkout) ->
    the ConfigDict its get_config(variant) returns."""
    path_text, _, variant = spec.partition(":")
    path = Path(path_text)
    if not path.is_file() and (ROOT / path).is_file():
        path = ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"recipe config {path_text} does not exist; give a configs/*.py file.")
    root = str(path.resolve().parents[1])
    if root not in sys.path:  # recipe files import their shared base as `configs.common`
        sys.path.insert(0, root)
    module_spec = importlib.util.spec_from_file_location(f"ncjax_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"override {key}={text} needs true or false.")
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(f"override {key}={text} needs a {kind.__name__}.") from None
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Sets 'a.b=value' overrides in place, typed like the field they replace; an unknown field
    raises ValueError naming it."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like field.name=value.")
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise ValueError(f"override {key}: the config has no field {part!r}.")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"override {key}: the config has no field {parts[-1]!r}.")
        node[parts[-1]] = _parse_value(text.strip(), node[parts[-1]], key)


def _overrides(text: str) -> list[str]:
    return [o.strip() for o in str(text).split(";") if o.strip()]


def recipe_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/x.py[:variant][;field=value;...]' -> the recipe's training config."""
    head, *overrides = str(spec).split(";")
    config = load_config_file(head.strip())
    apply_overrides(config, [o for o in overrides if o.strip()])
    return config


def cell_config(grid: Any, cell: Cell, workdir: str | Path | None = None) -> ml_collections.ConfigDict:
    """The training config of a cell: its recipe, then the grid's shared overrides, the base
    model, the seed, and for the baseline arm `arms.baseline_overrides`."""
    config = recipe_config(grid.recipe[cell.recipe])
    apply_overrides(config, _overrides(grid.train_overrides))
    if grid.base_model:
        config.model.path = grid.base_model
        config.model.init_missing_head = bool(grid.base_init_missing_head)
    config.seed = int(cell.seed)
    if not config.data.cache_dir and workdir is not None:
        # the tokenised corpus is keyed by corpus, settings and tokenizer: cells can share it
        config.data.cache_dir = str(Path(workdir) / "cache")
    if cell.arm == "baseline":
        apply_overrides(config, _overrides(grid.arms.baseline_overrides))
    config.log.progress = "off"
    return config


def base_model(grid: Any) -> tuple[str, bool]:
    """(model source, init_missing_head) of the base row: `base_model`, else the first recipe's."""
    if grid.base_model:
        return grid.base_model, bool(grid.base_init_missing_head)
    first = recipe_config(grid.recipe[split_list(grid.recipes, "recipes")[0]])
    return first.model.path, bool(first.model.init_missing_head)


# ----------------------------------------------------------------------------- identity


def check_identity(grid: Any, workdir: Path) -> None:
    """Records the grid config in DIR/grid.json, or refuses (ValueError, one line naming the
    fields) when DIR holds a grid made with a different config. `seeds` and `recipes` may grow:
    a finished cell keeps its meaning when cells are added."""
    current = json.loads(grid.to_json())
    path = workdir / "grid.json"
    if not path.is_file():
        logs.write_json_atomic(path, current)
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; restore it or start a new --workdir.") from None
    a, b = flatten(stored), flatten(current)
    growable = {"seeds", "recipes"}
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in growable)
    for k in growable & (a.keys() | b.keys()):
        old, new = str(a.get(k, "")).split(","), str(b.get(k, "")).split(",")
        if new[: len(old)] != old:
            differ.append(k)
    if differ:
        raise ValueError(f"{workdir} holds a grid made with a different config ({', '.join(differ)} differ); "
                         f"use a new --workdir or the config in {path}.")
    if a != b:
        logs.write_json_atomic(path, current)


# ----------------------------------------------------------------------------- one cell


def _evaluate(grid: Any, model_dir: str, init_missing_head: bool, out: Path, workdir: Path) -> None:
    from ncjax import bench

    e = grid.evaluate
    names = split_list(e.benchmarks, "evaluate.benchmarks")
    # fine-tuning benchmarks keep their resumable runs in the cell; the encoder is only read
    results = bench.evaluate(model_dir, names, backend=e.backend, batch_size=e.batch_size,
                             limit=e.limit or None, init_missing_head=init_missing_head, progress=False,
                             workdir=workdir / "finetune", seed=e.seed)
    logs.write_json_atomic(out, results)


def _measure(grid: Any, model_dir: str, init_missing_head: bool, out: Path) -> None:
    from ncjax import convert, measure

    m = grid.measure
    model, config = convert.load_model(model_dir, init_missing_head=init_missing_head, seed=0)
    tokenizer = convert.load_tokenizer(model_dir)
    convert.check_tokenizer(tokenizer, config.vocab_size, model_dir)
    lines = measure.read_corpus(str(_resource_or_path(m.corpus)), column=m.column or None)
    results = {}
    for name in split_list(m.class_sets, "measure.class_sets"):
        results[name] = measure.measure(model, tokenizer, lines, classes=name, policy=m.policy,
                                        features=m.features, label_shift=m.label_shift,
                                        max_tokens=m.max_tokens or None, batch_size=m.batch_size,
                                        seed=m.seed, min_count=m.min_count)
    logs.write_json_atomic(out, results)


def _resource_or_path(text: str) -> Path:
    if text.startswith("bundled:"):
        from ncjax import data

        return data.resolve_corpus(text)[0][0]  # (file, format, field) of its first file
    path = Path(text).expanduser()
    return path if path.exists() or not (ROOT / path).exists() else ROOT / path


def run_cell(grid: Any, workdir: str | Path, index: int) -> dict[str, Any]:
    """Runs (or finishes, or skips when complete) cell `index` of the grid in `workdir`; returns
    the cell record also written to its cell.json."""
    workdir = Path(workdir).absolute()
    all_cells = cells(grid)
    if not 0 <= index < len(all_cells):
        raise ValueError(f"--cell {index} is outside the grid's {len(all_cells)} cells (0..{len(all_cells) - 1}).")
    check_identity(grid, workdir)
    cell = all_cells[index]
    cdir = workdir / "cells" / cell.name
    done = cdir / "cell.json"
    if done.is_file():
        log.info("cell %s is complete; skipped", cell.name)
        return json.loads(done.read_text(encoding="utf-8"))
    cdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"cell": dataclasses.asdict(cell), "name": cell.name}
    if cell.recipe is None:
        model_dir, init_head = base_model(grid)
    else:
        from ncjax.train import train_and_evaluate

        config = cell_config(grid, cell, workdir)
        log.info("cell %s: training (%s)", cell.name, grid.recipe[cell.recipe])
        result = train_and_evaluate(config, cdir / "train")
        if result["status"] != "completed":
            raise RuntimeError(f"cell {cell.name} stopped at step {result['step']} ({result['status']}); rerun to resume.")
        model_dir, init_head = result["export"], False
        record["train"] = {"steps": result["step"], "config": json.loads(config.to_json())}
    record["model"] = str(model_dir)
    if not (cdir / "eval.json").is_file():
        log.info("cell %s: evaluating", cell.name)
        _evaluate(grid, model_dir, init_head, cdir / "eval.json", cdir)
    if not (cdir / "nc.json").is_file():
        log.info("cell %s: measuring neural collapse", cell.name)
        _measure(grid, model_dir, init_head, cdir / "nc.json")
    record["seconds"] = time.perf_counter() - t0
    logs.write_json_atomic(done, record)
    return record


def run(grid: Any, workdir: str | Path, *, aggregate_at_end: bool = True) -> dict[str, Any] | None:
    """Every cell in order (finished ones skipped), then the report."""
    workdir = Path(workdir).absolute()
    check_identity(grid, workdir)
    all_cells = cells(grid)
    for cell in all_cells:
        log.info("cell %d of %d: %s", cell.index + 1, len(all_cells), cell.name)
        run_cell(grid, workdir, cell.index)
    if aggregate_at_end:
        from ncjax import summary

        return summary.aggregate(workdir)
    return None
