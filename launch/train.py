r"""Train a BERT masked LM with a debiasing recipe and the NC3 regulariser.

    python launch/train.py --config configs/RECIPE.py[:variant] --workdir DIR [--config.a.b=value ...]

RECIPE is one of bert_nc3, mlm_nc3, ase_nc3, cda_nc3, dropout_nc3, mabel_nc3 (each file's docstring gives
its source, variants and launch command).

Every config field can be overridden on the command line (--config.penalty.alpha=10); an unknown
field stops with a suggestion. Rerunning the same command with the same --workdir resumes from
the latest complete checkpoint. Exit status: 0 when the run completed or was preempted (SIGTERM:
a checkpoint was saved), 1 on a bad input or a non-finite loss (one sentence on stderr).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

# Runs from a checkout without installing too (an installed ncjax works the same).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/bert_nc3.py:minilm.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, export).")
flags.mark_flags_as_required(["config", "workdir"])


def _one_line(message: str) -> str:
    """The last line of a message that embeds a traceback (config-file errors do)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        last = lines[-1]
        return last.split(": ", 1)[1] if re.match(r"^\w+(Error|Exception): ", last) else last
    return " ".join(lines)


def _parse(argv: list[str]) -> list[str]:
    """absl flag parsing with config errors (unknown field, bad value) turned into one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"{argv[0]}: {_one_line(e)}")
    except (AttributeError, KeyError) as e:
        # ml_collections reports an unknown field as AttributeError/KeyError with a 'Did you mean' hint.
        text = str(e).replace("\\n", " ")
        hint = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
        bad = hint.group(2) if hint else (re.findall(r"\w+", text) or ["?"])[0]
        names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        override = next((n for n in names if bad in n.split(".")), f"--config...{bad}")
        if hint:
            fixed = ".".join(hint.group(1) if part == bad else part for part in override.split("."))
            sys.exit(f"{argv[0]}: unknown config field {override}; did you mean {fixed}?")
        sys.exit(f"{argv[0]}: unknown config field {override}; see the config file for its fields.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger().setLevel(logging.INFO)
    # orbax reports every save step by step through absl at INFO; keep the run's own lines readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ncjax.train import train_and_evaluate

    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    logging.info("%s at step %d of %d; checkpoint %s; export %s", result["status"], result["step"],
                 result["total_steps"], result["checkpoint"], result["export"])


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
