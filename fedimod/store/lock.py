"""One bot per store: `fedimod run` holds an exclusive lock on its store for its whole life.

Two bots on one store both claim work, and when the instance answers slowly both file the same
report. The lock is an `flock` on a file beside the store (`STORE.lock`), which the kernel drops
when the holder dies however it dies (`kill -9` included), so a stale lock never needs cleaning.
The file names the holder (PID, host, start time) for the refusal message. CLI commands that
only read or stage writes (`status`, `bank import`) do not take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from fedimod.errors import StoreError


def lock_path(store: Path | str) -> Path:
    return Path(f"{store}.lock")


def describe_holder(store: Path | str) -> str:
    """Who holds the store's lock, as its lock file says ('' when unknown)."""
    try:
        holder = json.loads(lock_path(store).read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["since"])))
        return f"pid {int(holder['pid'])} on {holder['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


class StoreLock:
    """`with StoreLock(path):` — raises `StoreError` naming the holder when another bot has the store."""

    def __init__(self, store: Path | str) -> None:
        self._store = store
        self._path = lock_path(store)
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self._path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = describe_holder(self._store) or "another process"
            raise StoreError(f"store {self._store} is in use by another fedimod run ({holder}); one bot per "
                             "store: stop that one first, or give this one its own [store] path") from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {self._path}: {exc.strerror}") from exc
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock


def is_locked(store: Path | str) -> bool:
    """True while a bot holds the store (for `doctor` and `status`)."""
    try:
        fd = os.open(lock_path(store), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
