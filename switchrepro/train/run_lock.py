"""An exclusive lock on a run directory (or any file), so two processes never train one run at once.

The lock is an OS advisory lock (portalocker: flock on POSIX) on `<dir>/.lock`, released by the kernel
when the holder exits, `kill -9` included, so a crashed process never leaves a stale lock behind. The
holder writes its pid and command into the file, for the message the other process prints.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

import portalocker

LOCK_NAME = ".lock"


class Lock:
    """`with Lock(path): ...` blocks until the lock is ours; `try_acquire()` does not wait."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def try_acquire(self) -> bool:
        return self._acquire(blocking=False)

    def acquire(self) -> None:
        self._acquire(blocking=True)

    def _acquire(self, blocking: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        flags = portalocker.LOCK_EX | (0 if blocking else portalocker.LOCK_NB)
        try:
            portalocker.lock(f, flags)
        except portalocker.exceptions.LockException:
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}: {shlex.join(sys.argv)}\n")
        f.flush()
        self._file = f
        return True

    def holder(self) -> str:
        """Who holds (or last held) the lock, as the holder wrote it: 'pid N on HOST: COMMAND'."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "another process"
        return text.split(":", 1)[0] if text else "another process"

    def release(self) -> None:
        if self._file is not None:
            portalocker.unlock(self._file)
            self._file.close()
            self._file = None

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def run_dir_lock(run_dir: Path) -> Lock:
    return Lock(Path(run_dir) / LOCK_NAME)

