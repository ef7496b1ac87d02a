"""One process per work directory.

`WorkdirLock(directory)` takes an exclusive lock on `directory/.lock` for the life of a run: an
advisory `fcntl.flock` (released by the kernel when the holder dies, however it dies) plus the
holder's PID, host and start time written into the file for the message a second run prints.
A second run exits at once with one line naming the holder. A lock file left by a dead process
is not a lock (the kernel dropped the flock with its process), so it is taken over, and the
takeover is logged. The work directory must be on a filesystem with working flock (local disks,
NFSv4, Lustre and GPFS have it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)


class WorkdirLockedError(RuntimeError):
    """Another live process holds the work directory."""


class WorkdirLock:
    """Context manager: `with WorkdirLock(workdir): ...` (only process 0 of a multi-process run
    should take it)."""

    def __init__(self, directory: str | os.PathLike, what: str = "run"):
        self.path = Path(directory) / ".lock"
        self.what = what
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            h = self._holder()
            raise WorkdirLockedError(
                f"{self.path.parent} is in use by another {h.get('what', 'run')} (PID {h.get('pid', '?')} on "
                f"{h.get('host', '?')} since {h.get('since', '?')}); wait for it to finish or use another directory."
            ) from None
        previous = self._holder()
        if previous.get("pid"):
            # the kernel dropped the holder's flock when it died; only its record was left
            log.warning("took over the lock of %s left by PID %s on %s (no longer running)",
                        self.path.parent, previous["pid"], previous.get("host", "?"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
