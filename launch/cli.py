"""What every launch script shares: flag parsing with errors turned into one line (absl for the
config-driven scripts, argparse for the others), and Ctrl-C turned into one line instead of a
traceback."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import signal
import sys

from absl import flags


def one_line(message: str) -> str:
    """The last line of a message that embeds a traceback (config-file errors do)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        last = lines[-1]
        return last.split(": ", 1)[1] if re.match(r"^\w+(Error|Exception): ", last) else last
    return " ".join(lines)


def parse(argv: list[str]) -> list[str]:
    """absl flag parsing with config errors (unknown field, bad value) turned into one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"{argv[0]}: {one_line(e)}")
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad flag reported as one line on stderr (no usage dump), exit status 2."""

    def __init__(self, prog: str, doc: str):
        super().__init__(prog=prog, description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                         formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def whole_number(flag: str, low: int, what: str = ""):
    """An argparse type: a whole number >= low, else one line '{flag} {text!r} must be a whole
    number{what} >= {low}'."""

    def check(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} must be a whole number{what} >= {low}")
        return n

    check.__name__ = flag
    return check


def exit_on_interrupt(message: str) -> None:
    """From now on, Ctrl-C (SIGINT) prints `message` on one line and exits with status 130 instead
    of a traceback. The exit unwinds normally, so atomic writers remove their temporary files and
    no partial output is left."""

    def handler(signum, frame):
        # end the live progress bars' lines now, so the message printed at exit is a line of its own
        import tqdm.auto
        import tqdm.std

        # each tqdm class keeps its own registry of live bars; a bar caught half-drawn has no
        # newline yet, so one is written before the bars are closed
        bars = [b for cls in {tqdm.std.tqdm, tqdm.auto.tqdm} for b in list(getattr(cls, "_instances", ()))]
        if bars:
            sys.stderr.write("\n")
        for bar in bars:
            bar.close()
        atexit.register(lambda: print(message, file=sys.stderr, flush=True))
        raise SystemExit(130)

    signal.signal(signal.SIGINT, handler)


def run_setup(argv: list[str]) -> None:
    """The start of an absl main(): no positional arguments, INFO logging for the run's own lines
    (orbax reports every save through absl at INFO, so absl is kept at WARNING), quiet tokenizers."""
    if len(argv) > 1:
        sys.exit(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
