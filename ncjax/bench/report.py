"""Result files and the markdown summary of a benchmark run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, text: str) -> None:
    """Writes text to path through a temp file in the same directory and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic, indented, strict JSON (NaN is an error, never silently written)."""
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(benchmark, subset, metrics) rows for the summary table."""
    out: list[tuple[str, str, str]] = []
    if "stereoset" in results:
        for dom, r in results["stereoset"].items():
            scores = f"SS {_f(r['SS'])} · LMS {_f(r['LMS'])} · ICAT {_f(r['ICAT'])} · n {r['count']}"
            out.append(("StereoSet", dom, scores))
    for key, name in (("crows", "CrowS-Pairs"), ("crows_pll", "CrowS-Pairs (PLL)")):
        for bias, r in results.get(key, {}).items():
            out.append((name, bias, f"metric {_f(r['metric'])} · stereo {_f(r['stereo'])} · "
                                    f"antistereo {_f(r['antistereo'])} · n {r['n']}"))
    if "seat" in results:
        for test, r in results["seat"].items():
            if test == "avg_abs_effect_size":
                continue
            p = "–" if r["p_value"] is None else f"{r['p_value']:.3g}"
            out.append(("SEAT", test, f"effect size {_f(r['effect_size'], 3)} · p {p}"))
        out.append(("SEAT", "mean abs effect size", _f(results["seat"]["avg_abs_effect_size"], 3)))
    if "becpro" in results:
        b = results["becpro"]
        for grp, gap in b["gap"].items():
            if grp == "overall":
                continue
            m, f = b["mean_association"]["male"][grp], b["mean_association"]["female"][grp]
            out.append(("BEC-Pro", f"{grp} professions", f"male {_f(m, 3)} · female {_f(f, 3)} · gap {_f(gap, 3)}"))
        out.append(("BEC-Pro", "overall", f"gap {_f(b['gap']['overall'], 3)}"))
    if "winobias" in results:
        for kind, r in results["winobias"].items():
            scores = f"pro {_f(r['pro_acc'])} · anti {_f(r['anti_acc'])} · gap {_f(r['gap'])}"
            out.append(("WinoBias (MLM probe)", kind, scores))
    return out


def markdown(results: dict[str, Any]) -> str:
    """A markdown table of the headline numbers of a results dict from `ncjax.bench.evaluate`."""
    lines = [
        f"Model `{results.get('model', '?')}`, backend `{results.get('backend', '?')}`, "
        f"{_f(results.get('seconds', {}).get('total'), 1)} s",
        "",
        "| benchmark | subset | scores |",
        "|---|---|---|",
    ]
    lines += [f"| {b} | {s} | {m} |" for b, s, m in rows(results)]
    return "\n".join(lines) + "\n"
