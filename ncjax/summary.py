"""Aggregating an experiment grid: per-cell JSON -> report.json, report.md and figures.

`aggregate(DIR)` reads only the files the cells wrote (`cells/*/cell.json`, `eval.json`,
`nc.json`, `train/metrics.jsonl`; layout in `ncjax.grid`), so it can run anywhere the directory is
visible, after any subset of cells has finished (missing cells are listed in the report).

Statistics, per recipe and arm over seeds: mean and unbiased standard deviation (ddof = 1; none
for a single seed). The paired effect of NC3 per recipe and metric: d_s = (+NC3) - (baseline) for
every seed s present in both arms; its mean, the 95 % Student-t interval
mean +- t(0.975, n - 1) * sd / sqrt(n) (n >= 2), and sign consistency = the fraction of seeds
whose d_s has the sign of the mean. An effect is called significant when its interval excludes
0. For a bias metric, "fairer" means closer to its ideal value (50 for StereoSet SS and
CrowS-Pairs, 0 for gaps and effect sizes), so the report also gives the effect on the distance
to that ideal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ncjax import files, logs

# key, label, where in a cell's results, ideal value (None: higher is better, e.g. accuracy)
METRICS: tuple[tuple[str, str, tuple[str, ...], float | None], ...] = (
    ("ss", "StereoSet SS (gender)", ("eval", "stereoset", "gender", "SS"), 50.0),
    ("lms", "StereoSet LMS (gender)", ("eval", "stereoset", "gender", "LMS"), None),
    ("icat", "StereoSet ICAT (gender)", ("eval", "stereoset", "gender", "ICAT"), None),
    ("crows", "CrowS-Pairs (gender)", ("eval", "crows", "gender", "metric"), 50.0),
    ("becpro_gap", "BEC-Pro gap", ("eval", "becpro", "gap", "overall"), 0.0),
    ("seat", "SEAT mean |effect size|", ("eval", "seat", "avg_abs_effect_size"), 0.0),
    ("winobias_probe_gap", "WinoBias probe gap (type 1)", ("eval", "winobias-probe", "type1", "gap"), 0.0),
    ("tpr1", "WinoBias TPR-1", ("eval", "coref", "tpr1"), 0.0),
    ("tpr2", "WinoBias TPR-2", ("eval", "coref", "tpr2"), 0.0),
    ("bios_tpr_gap", "Bias-in-Bios TPR-GAP", ("eval", "bios", "tpr_gap"), 0.0),
    ("glue", "GLUE average", ("eval", "glue", "average"), None),
    ("unc3", "UNC3 (gender, cos std)", ("nc", "gender", "unc3_cos_std"), 0.0),
    ("nc1", "NC1 CDNV (gender)", ("nc", "gender", "nc1_cdnv"), 0.0),
    ("nc2", "NC2 equinorm CoV (gender)", ("nc", "gender", "nc2_equinorm_cov"), 0.0),
    ("nc3", "NC3 self-duality (gender)", ("nc", "gender", "nc3_self_duality"), 0.0),
    ("nc4", "NC4 NCC agreement (gender)", ("nc", "gender", "nc4_ncc_agreement"), None),
)
NC_KEYS = ("unc3_cos_std", "nc1_cdnv", "nc2_equinorm_cov", "nc2_equiangular_std", "nc3_self_duality",
           "nc4_ncc_agreement")
# t(0.975, df) for df = 1..30; above that the normal quantile is within 1 %.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with df degrees of freedom (table; 1.96 above 30)."""
    return _T975[df - 1] if df <= len(_T975) else 1.96


def _dig(obj: Any, path: tuple[str, ...]) -> float | None:
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return None
        obj = obj[p]
    return float(obj) if isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj) else None


def cell_values(results: dict[str, Any], gender_set: str) -> dict[str, float | None]:
    """The headline metrics of one cell from {'eval': eval.json, 'nc': nc.json}; the NC metrics
    are read from the class set named `gender_set`."""
    view = {"eval": results.get("eval", {}), "nc": {"gender": results.get("nc", {}).get(gender_set, {})}}
    return {key: _dig(view, path) for key, _, path, _ in METRICS}


def mean_std(xs: list[float]) -> dict[str, Any]:
    """{'mean', 'std' (ddof=1, None for one value), 'n', 'values'} of the non-missing values."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0, "values": []}
    a = np.asarray(xs, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None, "n": int(a.size),
            "values": [float(x) for x in a]}


def paired_effect(base: dict[int, float | None], treated: dict[int, float | None]) -> dict[str, Any]:
    """Effect of NC3 over seeds present in both arms: mean of d_s = treated - base, 95 % t
    interval, sign consistency and whether the interval excludes 0."""
    seeds = sorted(s for s in base if s in treated and base[s] is not None and treated[s] is not None)
    d = np.asarray([treated[s] - base[s] for s in seeds], np.float64)
    out: dict[str, Any] = {"n": int(d.size), "seeds": seeds, "diffs": [float(x) for x in d]}
    if d.size == 0:
        return out | {"mean": None, "ci95": None, "sign_consistency": None, "significant": False}
    mean = float(d.mean())
    out["mean"] = mean
    same = np.sign(d) == np.sign(mean) if mean != 0 else d == 0
    out["sign_consistency"] = float(same.mean())
    if d.size < 2:
        return out | {"ci95": None, "significant": False}
    half = t975(d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    out["ci95"] = [mean - half, mean + half]
    out["significant"] = bool(mean - half > 0 or mean + half < 0)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def collect(workdir: Path) -> dict[str, Any]:
    """Every complete cell's record, results and training curve, keyed by cell name."""
    out = {}
    for done in sorted((workdir / "cells").glob("*/cell.json")):
        cdir = done.parent
        record = _read_json(done)
        curve = []
        metrics_file = cdir / "train" / "metrics.jsonl"
        if metrics_file.is_file():
            curve = [{"step": r.get("step"), "loss": r.get("loss"), "mlm": r.get("loss/mlm"), "nc3": r.get("loss/nc3")}
                     for r in logs.read_metrics(metrics_file) if "loss" in r]  # not the held-out records
        out[record["name"]] = {**record, "eval": _read_json(cdir / "eval.json"), "nc": _read_json(cdir / "nc.json"),
                               "curve": curve}
    return out


def aggregate(workdir: str | Path, *, figures: bool = True) -> dict[str, Any]:
    """Reads the grid in `workdir` and writes report.json, report.md (and PNG figures when
    matplotlib is installed); returns the report dict."""
    from ncjax import grid as grid_lib
    import ml_collections

    workdir = Path(workdir).absolute()
    grid_file = workdir / "grid.json"
    if not grid_file.is_file():
        raise FileNotFoundError(f"{workdir} holds no grid ({grid_file} is missing); run launch/reproduce.py there first.")
    grid = ml_collections.ConfigDict(json.loads(grid_file.read_text(encoding="utf-8")))
    expected = grid_lib.cells(grid)
    found = collect(workdir)
    gender_set = grid_lib.split_list(grid.measure.class_sets, "measure.class_sets")[0]
    values = {name: cell_values(c, gender_set) for name, c in found.items()}
    recipes = grid_lib.split_list(grid.recipes, "recipes")
    rows: list[dict[str, Any]] = []
    base = next((c for c in expected if c.recipe is None), None)
    if base and base.name in values:
        rows.append({"row": "base", "recipe": None, "arm": None,
                     "metrics": {k: mean_std([v]) for k, v in values[base.name].items()}})
    effects: dict[str, dict[str, Any]] = {}
    for r in recipes:
        per_arm: dict[str, dict[int, dict[str, float | None]]] = {}
        for c in expected:
            if c.recipe == r and c.name in values:
                per_arm.setdefault(c.arm, {})[c.seed] = values[c.name]
        for arm in grid_lib.ARMS:
            if arm in per_arm:
                label = r if arm == "baseline" else f"{r} + NC3"
                rows.append({"row": label, "recipe": r, "arm": arm, "metrics": {
                    k: mean_std([v[k] for v in per_arm[arm].values()]) for k, *_ in METRICS}})
        if "baseline" in per_arm and "nc3" in per_arm:
            effects[r] = {}
            for key, _, _, ideal in METRICS:
                b = {s: v[key] for s, v in per_arm["baseline"].items()}
                t = {s: v[key] for s, v in per_arm["nc3"].items()}
                eff = paired_effect(b, t)
                if eff["n"] == 0:
                    continue
                if ideal is not None:
                    dist = lambda m: {s: None if x is None else abs(x - ideal) for s, x in m.items()}  # noqa: E731
                    eff["distance_to_ideal"] = paired_effect(dist(b), dist(t))
                effects[r][key] = eff
    requested = grid_lib.split_list(grid.evaluate.benchmarks, "evaluate.benchmarks")
    skipped = sorted({b for c in found.values() for b in requested if c.get("eval") and b not in c["eval"]})
    report = {
        "workdir": str(workdir),
        "benchmarks_skipped": skipped,
        "cells_expected": len(expected),
        "cells_complete": sorted(found),
        "cells_missing": [c.name for c in expected if c.name not in found],
        "gender_class_set": gender_set,
        "rows": rows,
        "effects": effects,
        "nc": {name: {cs: {k: c["nc"].get(cs, {}).get(k) for k in NC_KEYS} for cs in c["nc"]}
               for name, c in found.items()},
        "cells": {name: values[name] for name in sorted(values)},
        "notes": str(grid.get("notes", "")),
    }
    report = files.finite(report)
    logs.write_json_atomic(workdir / "report.json", report)
    from ncjax import figures as figures_lib

    written = figures_lib.draw(report, found, workdir) if figures else []
    logs.write_text_atomic(workdir / "report.md", markdown(report, written))
    return report


def _fmt(stat: dict[str, Any], digits: int = 2) -> str:
    if stat is None or stat.get("mean") is None:
        return "–"
    m = f"{stat['mean']:.{digits}f}"
    return f"{m} ± {stat['std']:.{digits}f}" if stat.get("std") is not None else m


def _active_metrics(report: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...], float | None]]:
    return [m for m in METRICS if any(r["metrics"].get(m[0], {}).get("n") for r in report["rows"])]


def markdown(report: dict[str, Any], figures: list[str]) -> str:
    """The report as markdown: the results table, the paired NC3 effects with a plain verdict,
    NC metrics per class set, missing cells and figures."""
    active = _active_metrics(report)
    lines = ["# NC3 experiment report", ""]
    if report["notes"]:
        lines += [report["notes"], ""]
    lines += [f"Cells complete: {len(report['cells_complete'])} of {report['cells_expected']}.", ""]
    if report.get("benchmarks_skipped"):
        lines += [f"Benchmarks asked for but skipped for lack of data: {', '.join(report['benchmarks_skipped'])} "
                  "(see the evaluation log of a cell for where to put the data).", ""]
    digits: Callable[[str], int] = lambda k: 3 if k.startswith(("nc", "unc", "seat", "becpro")) else 2  # noqa: E731
    lines.append("| row | " + " | ".join(label for _, label, _, _ in active) + " |")
    lines.append("|---|" + "---:|" * len(active))
    for r in report["rows"]:
        lines.append(f"| {r['row']} | " + " | ".join(_fmt(r["metrics"].get(k), digits(k)) for k, *_ in active) + " |")
    lines += ["", "Mean ± standard deviation over seeds (ddof = 1). Ideal values: SS and CrowS-Pairs 50; "
              "gaps, effect sizes, TPR and UNC3 0.", ""]
    lines.append("## Effect of NC3 (paired by seed)")
    lines.append("")
    significant, not_significant = [], []
    for recipe, effs in report["effects"].items():
        lines.append(f"### {recipe}")
        lines.append("")
        lines.append("| metric | mean diff (+NC3 - baseline) | 95 % interval | sign consistency | n | toward ideal |")
        lines.append("|---|---:|---|---:|---:|---|")
        for key, label, _, ideal in active:
            e = effs.get(key)
            if not e or e.get("mean") is None:
                continue
            # three significant digits: an NC metric's effect may be far below 0.001 and still significant
            ci = "–" if e["ci95"] is None else f"[{e['ci95'][0]:+.3g}, {e['ci95'][1]:+.3g}]"
            toward = "–"
            if ideal is not None and e.get("distance_to_ideal", {}).get("mean") is not None:
                dm = e["distance_to_ideal"]["mean"]
                toward = "closer" if dm < 0 else "further" if dm > 0 else "same"
            lines.append(f"| {label} | {e['mean']:+.3g} | {ci} | {e['sign_consistency']:.2f} | {e['n']} | {toward} |")
            (significant if e["significant"] else not_significant).append(f"{recipe}: {label}")
        lines.append("")
    lines.append("**Significant at 95 % (interval excludes 0):** " + ("; ".join(significant) or "none") + ".")
    lines.append("")
    lines.append("**Not significant:** " + ("; ".join(not_significant) or "none") + ".")
    lines.append("")
    if report["nc"]:
        sets = sorted({cs for v in report["nc"].values() for cs in v})
        lines.append("## Neural collapse per class set")
        lines.append("")
        for cs in sets:
            lines.append(f"### {cs}")
            lines.append("")
            lines.append("| cell | " + " | ".join(NC_KEYS) + " |")
            lines.append("|---|" + "---:|" * len(NC_KEYS))
            for name, v in sorted(report["nc"].items()):
                if cs in v:
                    lines.append(f"| {name} | " + " | ".join("–" if v[cs][k] is None else f"{v[cs][k]:.4g}"
                                                             for k in NC_KEYS) + " |")
            lines.append("")
    if report["cells_missing"]:
        lines += ["## Missing cells", "", ", ".join(report["cells_missing"]), ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    return "\n".join(lines)
