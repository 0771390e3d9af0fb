"""Retention (`alerter.retention`): old events' media folders and their event log rows go, oldest first.

An ended event goes when it ended more than `days` ago, and, oldest first, while
the media under RUN_DIR/snapshots take more than `max_mb`. Its rows leave the
event log in the same pass (first, so a failure leaves at worst a folder without
rows, which goes the same way later). Open events are never touched. A media
folder with no rows at all (its event pruned by hand, or the log replaced) goes by
its age, and by the disk cap, once it is ORPHAN_GRACE_SECONDS old: a younger one
may belong to an event whose rows are still waiting for an unwritable log.

The alerter runs a pass at start and every CHECK_SECONDS, in a thread of its own
at a lower CPU priority. The clock is a parameter, so tests can move time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import telemetry
from .media import SNAPSHOT_DIR, lower_priority
from .review_config import RetentionConfig

log = logging.getLogger(__name__)

CHECK_SECONDS = 60.0
ORPHAN_GRACE_SECONDS = 600.0
EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
BYTES_PER_MB = 1_000_000


@dataclass
class Pruned:
    events: int = 0  # ended events removed (rows and media)
    folders: int = 0  # media folders removed, orphans included
    bytes: int = 0  # media bytes freed
    kept_bytes: int = 0  # media bytes left


class Retention:
    def __init__(
        self,
        run_dir: str | os.PathLike,
        event_log: str | os.PathLike,
        cfg: RetentionConfig,
        clock: Callable[[], float] = time.time,
    ):
        self.root = Path(run_dir) / SNAPSHOT_DIR
        self.event_log = Path(event_log)
        self.cfg = cfg
        self.clock = clock
        self._sizes: dict[str, tuple[int, int, float]] = {}  # folder -> (its mtime_ns, bytes, newest file mtime)

    def prune(self) -> Pruned:
        now = self.clock()
        folders = self._folders()
        known, ended = self._events()
        candidates = [(last, event_id, True) for event_id, last in ended]
        candidates += [
            (modified, name, False)
            for name, (_, modified) in folders.items()
            if name not in known and modified < now - ORPHAN_GRACE_SECONDS
        ]
        cutoff = now - self.cfg.days * 86400 if self.cfg.days is not None else float("-inf")
        cap = self.cfg.max_mb * BYTES_PER_MB if self.cfg.max_mb is not None else float("inf")
        total = sum(size for size, _ in folders.values())
        doomed, why = [], {"age": 0, "disk": 0}
        for when, name, has_rows in sorted(candidates):
            if when < cutoff:
                why["age"] += has_rows
            elif total > cap:
                why["disk"] += has_rows
            else:
                break
            doomed.append((name, has_rows))
            total -= folders.get(name, (0, 0))[0]
        result = Pruned(kept_bytes=total)
        self._delete_rows([name for name, has_rows in doomed if has_rows])
        for name, has_rows in doomed:
            result.events += has_rows
            if name in folders:
                self._remove(self.root / name)
                result.folders += 1
                result.bytes += folders[name][0]
        for reason, count in why.items():
            if count:
                telemetry.RETENTION_PRUNED.labels(reason).inc(count)
        telemetry.MEDIA_DISK_BYTES.set(total)
        return result

    def _folders(self) -> dict[str, tuple[int, float]]:
        """(bytes, last modified) of each event media folder.

        A folder's files are summed again only when the folder changed: media files are
        written under a temporary name and renamed into place, which changes the folder
        (a clip still being written counts once it is complete).
        """
        sizes = {}
        if self.root.is_dir():
            for entry in os.scandir(self.root):
                if not EVENT_ID.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
                known = self._sizes.get(entry.name)
                if known is None or known[0] != stat.st_mtime_ns:
                    size, modified = 0, stat.st_mtime
                    for item in os.scandir(entry.path):
                        if item.is_file(follow_symlinks=False):
                            file = item.stat(follow_symlinks=False)
                            size, modified = size + file.st_size, max(modified, file.st_mtime)
                    known = (stat.st_mtime_ns, size, modified)
                sizes[entry.name] = known
        self._sizes = sizes
        return {name: (size, modified) for name, (_, size, modified) in sizes.items()}

    def _events(self) -> tuple[set[str], list[tuple[str, float]]]:
        """Every event id in the log, and (id, time of its last row) of the ended ones, oldest first."""
        if not self.event_log.exists():
            return set(), []
        db = sqlite3.connect(str(self.event_log), timeout=10)
        try:
            rows = db.execute(
                "SELECT event_id, MAX(time), SUM(type = 'end') FROM events GROUP BY event_id ORDER BY MIN(id)"
            ).fetchall()
        finally:
            db.close()
        return {row[0] for row in rows}, [(event_id, last) for event_id, last, ends in rows if ends]

    def _delete_rows(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        db = sqlite3.connect(str(self.event_log), timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(event_ids), 500):  # SQLite limits the parameters of one statement
                batch = event_ids[start : start + 500]
                db.execute(f"DELETE FROM events WHERE event_id IN ({','.join('?' * len(batch))})", batch)
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _remove(folder: Path) -> None:
        if folder.is_symlink():
            folder.unlink()
        else:
            shutil.rmtree(folder, ignore_errors=True)


class RetentionThread:
    """Prunes at start and every CHECK_SECONDS until stopped; a failed pass is logged and tried again."""

    def __init__(self, retention: Retention, stop: threading.Event, every: float = CHECK_SECONDS):
        self.retention = retention
        self.stop = stop
        self.every = every
        self.thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        lower_priority()
        while True:
            try:
                pruned = self.retention.prune()
                if pruned.folders or pruned.events:
                    log.info(
                        "retention: removed %d events and %d media folders (%.1f MB); %.1f MB of media kept",
                        pruned.events,
                        pruned.folders,
                        pruned.bytes / BYTES_PER_MB,
                        pruned.kept_bytes / BYTES_PER_MB,
                    )
            except (OSError, sqlite3.Error) as e:
                log.warning("retention: pass failed, next in %.0f s: %s", self.every, e)
            if self.stop.wait(self.every):
                return
