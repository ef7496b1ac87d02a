r"""Train a BERT masked LM with a debiasing recipe and the NC3 regulariser.

    python launch/train.py --config configs/RECIPE.py[:variant] --workdir DIR [--config.a.b=value ...]

RECIPE is one of bert_nc3, mlm_nc3, ase_nc3, cda_nc3, dropout_nc3, mabel_nc3 (each file's docstring gives
its source, variants and launch command).

Every config field can be overridden on the command line (--config.penalty.alpha=10); an unknown
field stops with a suggestion. Rerunning the same command with the same --workdir resumes from
the latest readable checkpoint (a damaged one is moved aside). A work directory trains one config:
a rerun with different values is refused, naming the fields, except those that
--allow_config_change names (train.num_steps, train.log_every_steps, checkpoint.every_steps,
checkpoint.max_to_keep, checkpoint.async_save, data.cache_dir, log.*, export.*), e.g.

    python launch/train.py --config configs/bert_nc3.py:tiny --workdir /tmp/tiny \
        --config.train.num_steps=60 --allow_config_change=train.num_steps

Exit status: 0 when the run completed or was preempted (SIGTERM: a checkpoint was saved), 130
when it was interrupted (Ctrl-C/SIGINT: a checkpoint was saved, one line on stderr), 1 on a bad
input, a refused config or a non-finite loss (one sentence on stderr).
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
    "config", None, "Training config file, e.g. configs/bert_nc3.py:minilm.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, export).")
_ALLOW = flags.DEFINE_string(
    "allow_config_change", "",
    "Comma-separated config fields (or block.* patterns) that may differ from the config that created "
    "--workdir when resuming: train.num_steps, train.log_every_steps, checkpoint.*, data.cache_dir, log.*, export.*.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    cli.run_setup(argv)
    # before and after the loop (which saves a checkpoint first), Ctrl-C is one line, no traceback
    cli.exit_on_interrupt("interrupted; rerun the same command to resume from the last checkpoint")
    from ncjax import cache, files
    from ncjax.train import train_and_evaluate

    try:
        # a rerun (a resume after preemption) loads the compiled step instead of compiling it again
        cache.enable(files.check_directory(_WORKDIR.value, "--workdir") / "jax_cache")
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW.value)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    if result["status"] == "interrupted":
        print(f"interrupted at step {result['step']} of {result['total_steps']}; checkpoint {result['checkpoint']} "
              "saved; rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(130)
    logging.info("%s at step %d of %d; checkpoint %s; export %s", result["status"], result["step"],
                 result["total_steps"], result["checkpoint"], result["export"])


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse)
