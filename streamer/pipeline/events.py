"""Alert events: one camera's state machine, and the durable log every event goes to first.

An event opens (`start`) when a frame's smoothed score reaches the threshold,
sends an `update` every `update_every` frames while open, and ends (`end`) after
`end_after` frames in a row below the threshold, so a bicycle crossing for 80
frames is one event. An event also ends when its recording does: the source
ends, a new recording starts (new clip, reconnected or restarted camera), or the
pipeline shuts down; `reason` says which. An event left open by an alerter that
was killed is ended with reason `restart` when the next alerter starts (from its
last record in the log): its frames after the kill are not known, so it is not
resumed, and an anomaly still in view starts a new event.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np


def top_boxes(patch_scores: np.ndarray, boxes: np.ndarray, threshold: float, limit: int) -> list[dict]:
    """The most anomalous patches at or above `threshold`, highest first, as box dicts in frame pixels.

    When no patch of this frame reaches the threshold (the smoothed score can, from
    earlier frames), the single highest patch, if it scores above normal (> 0).
    """
    picked = np.flatnonzero(patch_scores >= threshold)
    if not len(picked) and len(patch_scores) and patch_scores.max() > 0:
        picked = np.array([int(np.argmax(patch_scores))])
    picked = picked[np.argsort(-patch_scores[picked], kind="stable")][:limit]
    return [
        {"x": int(x), "y": int(y), "w": int(w), "h": int(h), "score": round(float(patch_scores[i]), 4)}
        for i, (x, y, w, h) in zip(picked, boxes[picked])
    ]


class EventTracker:
    """Turns one camera's smoothed frame scores into start/update/end events."""

    def __init__(self, camera: str, threshold: float, end_after: int, update_every: int, model: dict):
        self.camera = camera
        self.threshold = threshold
        self.end_after = end_after
        self.update_every = update_every
        self.model = model
        self._open: dict | None = None  # the open event's fixed fields
        self._below = 0  # frames in a row below the threshold
        self._since_sent = 0  # frames since the last start/update
        self._peak = 0.0

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def frame(self, position: dict, score: float, boxes: Callable[[], list[dict]]) -> dict | None:
        """The event (if any) this frame causes; `position` has seq, frame_index, clip, capture_time."""
        above = score >= self.threshold
        if self._open is None:
            if not above:
                return None
            self._open = {"event_id": uuid.uuid4().hex, "camera": self.camera, "start_seq": position["seq"]}
            self._below, self._since_sent, self._peak = 0, 0, score
            return self._event("start", position, score, boxes())
        self._peak = max(self._peak, score)
        self._below = 0 if above else self._below + 1
        self._since_sent += 1
        if self._below >= self.end_after:
            return self.close(position, "below_threshold", score)
        if self._since_sent >= self.update_every:
            self._since_sent = 0
            return self._event("update", position, score, boxes())
        return None

    def close(self, position: dict, reason: str, score: float | None = None) -> dict | None:
        """End the open event, if there is one (an end carries no boxes)."""
        if self._open is None:
            return None
        event = self._event("end", position, score, [], reason)
        self._open = None
        return event

    def _event(self, kind: str, position: dict, score: float | None, boxes: list, reason: str | None = None) -> dict:
        return {
            **self._open,
            "type": kind,
            "reason": reason,
            "seq": position["seq"],
            "frame_index": position.get("frame_index"),
            "clip": position.get("clip", ""),
            "frames": position["seq"] - self._open["start_seq"] + 1,
            "capture_time": position["capture_time"],
            "time": time.time(),
            "score": None if score is None else round(float(score), 6),
            "peak_score": round(float(self._peak), 6),
            "threshold": self.threshold,
            "boxes": boxes,
            "model": self.model,
        }


class EventLogError(RuntimeError):
    """The event log cannot be opened or written (disk full, read-only, missing folder...)."""


class EventLog:
    """Durable local log of events: SQLite in WAL mode, each event committed (fsync) before it is published.

    Opened on first use, and again after a failure, so a log that cannot be opened
    yet is retried like a write that failed. Every failure is an EventLogError.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self.db is not None:
            return self.db
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, "
                "camera TEXT NOT NULL, type TEXT NOT NULL, time REAL NOT NULL, body TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS events_by_event_id ON events (event_id)")
        except (sqlite3.Error, OSError) as e:
            if db is not None:
                db.close()
            raise EventLogError(f"cannot open {self.path}: {e}") from None
        self.db = db
        return db

    def append(self, event: dict) -> str:
        """Commit the event; returns its JSON text, ready to publish."""
        body = json.dumps(event, separators=(",", ":"))
        try:
            self._connection().execute(
                "INSERT INTO events (event_id, camera, type, time, body) VALUES (?, ?, ?, ?, ?)",
                (event["event_id"], event["camera"], event["type"], event["time"], body),
            )
        except sqlite3.Error as e:
            self.close()  # the next try reopens: the file may have been replaced or remounted meanwhile
            raise EventLogError(f"cannot write to {self.path}: {e}") from None
        return body

    def open_events(self) -> list[dict]:
        """The last record of each event that has no end, oldest first."""
        try:
            rows = self._connection().execute(
                "SELECT body FROM events WHERE id IN (SELECT MAX(id) FROM events GROUP BY event_id) "
                "AND type != 'end' ORDER BY id"
            )
            return [json.loads(body) for (body,) in rows]
        except sqlite3.Error as e:
            raise EventLogError(f"cannot read {self.path}: {e}") from None

    def contains(self, event: dict) -> bool:
        """Whether this very record is in the log already."""
        try:
            row = self._connection().execute(
                "SELECT 1 FROM events WHERE event_id = ? AND body = ?",
                (event["event_id"], json.dumps(event, separators=(",", ":"))),
            )
            return row.fetchone() is not None
        except sqlite3.Error as e:
            raise EventLogError(f"cannot read {self.path}: {e}") from None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class EventLogReader:
    """Read-only queries for a process that follows the log (the notifier), on one connection kept open.

    Rows are addressed by their id, which only grows (AUTOINCREMENT): a reader's
    position is the last row it has dealt with. A log that does not exist yet, or
    whose table the alerter has not created yet, reads as empty. `types` limits a
    query to those event types.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.db: sqlite3.Connection | None = None

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            if self.db is None:
                if not self.path.exists():
                    return []
                self.db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            self.close()  # the next query reopens: the file may have been replaced meanwhile
            if "no such table" in str(e):
                return []
            raise EventLogError(f"cannot read {self.path}: {e}") from None

    @staticmethod
    def _of_types(types: tuple[str, ...] | None) -> tuple[str, tuple]:
        return ("", ()) if types is None else (f" AND type IN ({', '.join('?' * len(types))})", tuple(types))

    def after(self, row: int, limit: int, types: tuple[str, ...] | None = None) -> list[tuple[int, dict]]:
        """(row, event) for up to `limit` events after `row`, oldest first."""
        where, args = self._of_types(types)
        rows = self._rows(f"SELECT id, body FROM events WHERE id > ?{where} ORDER BY id LIMIT ?", (row, *args, limit))
        return [(row_id, json.loads(body)) for row_id, body in rows]

    def backlog(self, row: int, types: tuple[str, ...] | None = None) -> tuple[int, float | None]:
        """How many events come after `row`, and the `time` of the oldest of them (None if none)."""
        where, args = self._of_types(types)
        rows = self._rows(f"SELECT COUNT(*), MIN(time) FROM events WHERE id > ?{where}", (row, *args))
        return rows[0] if rows else (0, None)

    def keeping(self, row: int, keep: int, types: tuple[str, ...] | None = None) -> int:
        """The row after which only the newest `keep` events after `row` remain (`row` if no more than that)."""
        where, args = self._of_types(types)
        rows = self._rows(
            f"SELECT id FROM events WHERE id > ?{where} ORDER BY id DESC LIMIT 1 OFFSET ?", (row, *args, keep)
        )
        return rows[0][0] if rows else row

    def before_time(self, time_: float) -> int:
        """The last row whose event is older than `time_` (0 if none)."""
        rows = self._rows("SELECT MAX(id) FROM events WHERE time < ?", (time_,))
        return (rows[0][0] if rows else None) or 0

    def first_event_id(self) -> str | None:
        """The event id of the log's first row: it tells this log from one that replaced it."""
        rows = self._rows("SELECT event_id FROM events ORDER BY id LIMIT 1")
        return rows[0][0] if rows else None

    def last_per_camera(self, up_to: int) -> list[dict]:
        """The last event of each camera up to row `up_to`, oldest first."""
        rows = self._rows(
            "SELECT body FROM events WHERE id IN "
            "(SELECT MAX(id) FROM events WHERE id <= ? GROUP BY camera) ORDER BY id",
            (up_to,),
        )
        return [json.loads(body) for (body,) in rows]

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def spill(path: str | os.PathLike, events) -> None:
    """Append events to a JSON lines file, synced: where they go when the log cannot take them at exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.writelines(json.dumps(event, separators=(",", ":")) + "\n" for event in events)
        out.flush()
        os.fsync(out.fileno())


def read_spill(path: str | os.PathLike) -> list[dict]:
    """The events of a spill file, oldest first; a torn line (a crash while spilling) is skipped."""
    events = []
    for line in Path(path).read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and {"event_id", "camera", "type", "time"} <= event.keys():
            events.append(event)
    return events


def closed_by_restart(last: dict) -> dict:
    """The end of an event a killed alerter left open, from its last logged record."""
    return {**last, "type": "end", "reason": "restart", "time": time.time(), "score": None, "boxes": []}


def read_events(path: str | os.PathLike) -> list[dict]:
    """All events of a log, oldest first."""
    return [event for _, event in events_after(path, 0)]


def events_after(path: str | os.PathLike, row_id: int) -> list[tuple[int, dict]]:
    """(row id, event) for each event logged after row `row_id`, oldest first; none while the log does not exist
    (or the alerter has created the file but not yet its table)."""
    if not Path(path).exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone():
            return []
        rows = db.execute("SELECT id, body FROM events WHERE id > ? ORDER BY id", (row_id,))
        return [(row, json.loads(body)) for row, body in rows]
    finally:
        db.close()
