"""Small records that let a restarted stage carry on where its killed predecessor stopped.

Capture writes each frame's number ahead of sending it, and the alerter writes
how far it got per camera, so after a kill -9 the frames in flight show up as a
gap that the alerter counts as lost, instead of vanishing unnoticed.

A record is rewritten in place with one pwrite of a padded JSON object: a process
killed at any moment leaves the old or the new record, and the page cache keeps
it (a power cut may not, but then every stage restarts anyway). No fsync: these
are written once per frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Checkpoint:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    def read(self) -> dict | None:
        """The record, or None when there is none (or it is unreadable)."""
        try:
            record = json.loads(os.pread(self._fd, self._size, 0))
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def write(self, record: dict) -> None:
        data = json.dumps(record, separators=(",", ":")).encode()
        self._size = max(self._size, len(data))  # padding covers whatever a longer record left
        os.pwrite(self._fd, data.ljust(self._size), 0)

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)


def state_path(run_dir: str | os.PathLike, name: str) -> Path:
    return Path(run_dir) / "state" / f"{name}.json"
