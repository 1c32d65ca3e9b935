"""One training job per output folder: an exclusive lock on OUTPUT_DIR/train.lock while a job runs.

The lock is an OS file lock (flock): the kernel drops it when its process ends, even when the process is
killed, so a lock left by a dead job never blocks the next one. The file names the holder (pid, host,
start time) for the message a second job gets; a holder that ended without releasing is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from uniid_core.errors import UniIDError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_FILE = "train.lock"


class OutputDirLock:
    """The exclusive lock of one output folder (acquire refuses when another live job holds it)."""

    def __init__(self, out: Path) -> None:
        """Lock OUTPUT_DIR/train.lock (nothing is taken until acquire)."""
        self.out = out
        self.path = out / LOCK_FILE
        self.handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise UniIDError naming the job that holds it."""
        if fcntl is None:
            print(f"note: no file locks on this system; run one job at a time in {self.out}", file=sys.stderr)
            return
        self.out.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # held open while the job runs
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle) or "it has not recorded itself yet"
            handle.close()
            raise UniIDError(
                f"{self.out} is in use by another training job ({holder}): wait for it to end, or give this "
                "job another output_dir"
            ) from None
        except OSError as exc:
            handle.close()
            print(
                f"note: could not lock {self.path} ({exc.strerror}; the filesystem has no file locks): run "
                f"one job at a time in {self.out}",
                file=sys.stderr,
            )
            return
        left = _holder(handle)
        if left:
            print(f"taking over {self.path} from {left}, which ended without releasing it", file=sys.stderr)
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        """Empty the file (a clean end) and drop the lock; does nothing when not held."""
        if self.handle is None:
            return
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None


def _holder(handle: IO[str]) -> str | None:
    """'pid N on host H since T' from a lock file's content, or None when it is empty or unreadable."""
    handle.seek(0)
    try:
        info = json.loads(handle.read())
        return f"pid {info['pid']} on host {info['host']} since {info['started']}"
    except (ValueError, KeyError, TypeError):
        return None
