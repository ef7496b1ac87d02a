r"""Run the experiment grid: each recipe with and without NC3 over seeds, evaluated, measured and
reported.

    python launch/reproduce.py --config configs/reproduce.py[:variant] --workdir DIR
    python launch/reproduce.py --config configs/reproduce.py:minilm_quick --workdir DIR --cell K
    python launch/reproduce.py --config configs/reproduce.py:minilm_quick --workdir DIR --aggregate
    python launch/reproduce.py --config configs/reproduce.py:minilm_quick --workdir DIR --list

Without --cell it runs every cell in order (finished cells are skipped, a half-trained one
resumes) and then writes DIR/report.md, DIR/report.json and the figures. --cell K runs one cell
(0 is the base model), so a cluster array job runs the grid in parallel on shared storage, e.g.
SLURM `#SBATCH --array=0-12` with `--cell $SLURM_ARRAY_TASK_ID`, followed by one --aggregate.
A work directory made with another grid config is refused. Exit status 0 on success, 1 with one
line on stderr on a bad input.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# Runs from a checkout without installing too (an installed ncjax works the same).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Grid config file, e.g. configs/reproduce.py:minilm_quick.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Grid directory (cells, report).")
_CELL = flags.DEFINE_integer("cell", None, "Run only this cell (0 = the base model); see --list.")
_AGGREGATE = flags.DEFINE_bool("aggregate", False, "Only write the report from the finished cells.")
_LIST = flags.DEFINE_bool("list", False, "Print the cells with their index and state, then exit.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    cli.run_setup(argv)
    workdir = Path(_WORKDIR.value)
    from ncjax import files, grid

    try:  # before anything is loaded or created: the grid config, its directory and the report
        grid.cells(_CONFIG.value)
        files.check_directory(workdir, "--workdir")
        if not _LIST.value and _CELL.value is None:
            files.check_outputs({"report": workdir / "report.json", "report table": workdir / "report.md"})
    except ValueError as e:
        sys.exit(f"error: {e}")
    from ncjax import cache, summary

    # Every cell of a grid compiles the same few programs: a persistent cache in the grid
    # directory compiles each once (JAX_COMPILATION_CACHE_DIR chooses another place).
    try:
        cache.enable(workdir / "jax_cache")
    except ValueError as e:
        sys.exit(f"error: {e}")

    try:
        if _LIST.value:
            for cell in grid.cells(_CONFIG.value):
                done = (workdir / "cells" / cell.name / "cell.json").is_file()
                print(f"{cell.index}\t{cell.name}\t{'complete' if done else 'to do'}")
            return
        if _AGGREGATE.value:
            if (workdir / "grid.json").is_file():
                grid.check_identity(_CONFIG.value, workdir)
            report = summary.aggregate(workdir)
        elif _CELL.value is not None:
            grid.run_cell(_CONFIG.value, workdir, _CELL.value)
            return
        else:
            report = grid.run(_CONFIG.value, workdir)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    missing = report["cells_missing"]
    logging.info("report: %s (%d of %d cells%s)", workdir / "report.md", len(report["cells_complete"]),
                 report["cells_expected"], f"; missing {', '.join(missing)}" if missing else "")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse)
