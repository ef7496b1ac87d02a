"""PNG figures of an experiment grid report (matplotlib, the `plot` extra).

`draw(report, cells, workdir)` writes, next to report.md:
- metrics.png: one panel per headline metric, a bar per report row (base, each recipe and its
  + NC3 arm) at the mean over seeds with the standard deviation as error bar;
- unc3_vs_ss.png: UNC3 (gender classes) against StereoSet SS (gender), one point per cell;
- curves.png: the MLM loss and the NC3 penalty against the step, mean over seeds per recipe
  and arm.
Each file is drawn to a temporary name and renamed. Returns the paths written (none when
matplotlib is missing; the report then says how to get the figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ncjax import files


def _save(fig, path: Path) -> str:
    files.write_bytes_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    return str(path)


def draw(report: dict[str, Any], cells: dict[str, dict[str, Any]], workdir: Path) -> list[str]:
    """Writes the figures described in the module docstring; returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from ncjax.summary import METRICS

    written = []
    rows = report["rows"]
    active = [(k, label) for k, label, _, _ in METRICS if any(r["metrics"].get(k, {}).get("n") for r in rows)]
    if active and rows:
        ncols = min(4, len(active))
        nrows = -(-len(active) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
        colors = ["#888888" if r["arm"] is None else "#4c72b0" if r["arm"] == "baseline" else "#dd8452" for r in rows]
        for ax, (key, label) in zip(axes.flat, active):
            means = [r["metrics"][key]["mean"] if r["metrics"][key]["mean"] is not None else np.nan for r in rows]
            errs = [r["metrics"][key]["std"] or 0.0 for r in rows]
            ax.bar(range(len(rows)), means, yerr=errs, color=colors, capsize=3)
            ax.set_title(label, fontsize=9)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([r["row"] for r in rows], rotation=45, ha="right", fontsize=7)
        for ax in list(axes.flat)[len(active):]:
            ax.axis("off")
        fig.tight_layout()
        written.append(_save(fig, workdir / "metrics.png"))
        plt.close(fig)

    points = [(v.get("unc3"), v.get("ss"), name) for name, v in report["cells"].items()]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    if points:
        fig, ax = plt.subplots(figsize=(4.8, 3.6))
        for unc3, ss, name in points:
            arm = cells[name]["cell"].get("arm")
            ax.scatter(unc3, ss, color="#888888" if arm is None else "#4c72b0" if arm == "baseline" else "#dd8452",
                       marker="o" if arm != "nc3" else "^")
        ax.set_xlabel("UNC3 (gender classes, std of cos)")
        ax.set_ylabel("StereoSet SS (gender)")
        ax.axhline(50.0, color="black", lw=0.5, ls="--")
        ax.set_title("UNC3 vs SS, one point per cell (blue baseline, orange + NC3)", fontsize=8)
        written.append(_save(fig, workdir / "unc3_vs_ss.png"))
        plt.close(fig)

    groups: dict[str, list[list[dict[str, Any]]]] = {}
    for c in cells.values():
        if c.get("curve") and c["cell"].get("recipe"):
            label = c["cell"]["recipe"] + (" + NC3" if c["cell"]["arm"] == "nc3" else "")
            groups.setdefault(label, []).append(c["curve"])
    if groups:
        fig, (ax_mlm, ax_nc3) = plt.subplots(1, 2, figsize=(9, 3.4))
        for label, curves in sorted(groups.items()):
            steps = sorted({r["step"] for curve in curves for r in curve})
            # a baseline does not compute the penalty (it logs 0): leave it off the NC3 panel
            panels = ((ax_mlm, "mlm"),) if not label.endswith("+ NC3") else ((ax_mlm, "mlm"), (ax_nc3, "nc3"))
            for ax, key in panels:
                ys = []
                for s in steps:
                    vals = [r[key] for curve in curves for r in curve if r["step"] == s and r.get(key) is not None]
                    ys.append(np.mean(vals) if vals else np.nan)
                if not np.all(np.isnan(ys)):
                    ax.plot(steps, ys, label=label)
        ax_mlm.set_title("MLM loss (mean over seeds)", fontsize=9)
        ax_nc3.set_title("NC3 penalty (mean over seeds)", fontsize=9)
        for ax in (ax_mlm, ax_nc3):
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, workdir / "curves.png"))
        plt.close(fig)
    return written
