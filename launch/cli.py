"""What every launch script shares."""

from __future__ import annotations

import atexit
import signal
import sys


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
