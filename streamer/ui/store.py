"""What the review page reads: events from the log (read-only), their media files and score traces.

Everything here comes from files another process writes, and a page serves it to
people: it is treated as untrusted. Rows that do not parse as the alerter writes
them are skipped (and logged once), numbers are checked to be numbers, an event
id is 32 lowercase hex digits or nothing, and a media file is one of MEDIA_NAMES
inside RUN_DIR/snapshots/<event id>/, never a path taken from the data.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..pipeline.media import SNAPSHOT_DIR

log = logging.getLogger(__name__)

EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
MEDIA_NAMES = ("start.jpg", "peak.jpg", "clip.mp4", "clip.webm")
MAX_PAGE = 200
MAX_TRACE_BYTES = 8 << 20
_GROUPED = "SELECT event_id, MIN(id) AS first, MAX(id) AS last FROM events GROUP BY event_id"


@dataclass
class EventSummary:
    id: str
    row: int  # the log row of its start: the paging cursor
    camera: str
    start: float  # capture time of the frame that started it
    end: float | None  # capture time of its last frame, once ended
    duration: float  # seconds, to the end or to the latest record of an open event
    frames: int
    peak_score: float
    threshold: float
    reason: str | None  # why it ended
    start_frame: int | None
    media: dict[str, str] = field(default_factory=dict)  # "start.jpg" -> URL, for the files that exist

    @property
    def open(self) -> bool:
        return self.end is None

    def to_json(self) -> dict:
        return {**asdict(self), "open": self.open, "url": f"/events/{self.id}"}


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _optional_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class EventStore:
    def __init__(self, event_log: str | Path, run_dir: str | Path):
        self.event_log = Path(event_log)
        self.media_root = Path(run_dir) / SNAPSHOT_DIR
        self._warned = False

    def _query(self, sql: str, params=()) -> list[tuple]:
        if not self.event_log.exists():
            return []
        db = sqlite3.connect(self.event_log.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def page(
        self,
        camera: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> tuple[list[EventSummary], int | None]:
        """Events newest first, started in [since, until) on `camera`, before the row cursor `before`;
        and the cursor of the next page (None on the last)."""
        limit = max(1, min(limit, MAX_PAGE))
        rows = self._query(
            f"SELECT g.first, f.body, l.body FROM ({_GROUPED}) g JOIN events f ON f.id = g.first "
            "JOIN events l ON l.id = g.last WHERE g.first < ? AND (? IS NULL OR f.camera = ?) "
            "AND f.time >= ? AND f.time < ? ORDER BY g.first DESC LIMIT ?",
            (
                before if before is not None else 2**63 - 1,
                camera,
                camera,
                since if since is not None else -math.inf,
                until if until is not None else math.inf,
                limit + 1,
            ),
        )
        more = len(rows) > limit
        events = [summary for row in rows[:limit] if (summary := self._summary(*row)) is not None]
        return events, (rows[limit - 1][0] if more else None)

    def event(self, event_id: str) -> dict | None:
        """One event: its summary, every logged record, the boxes of its highest-scoring record, its score trace."""
        if not EVENT_ID.match(event_id):
            return None
        rows = self._query("SELECT id, body FROM events WHERE event_id = ? ORDER BY id", (event_id,))
        if not rows:
            return None
        summary = self._summary(rows[0][0], rows[0][1], rows[-1][1])
        if summary is None:
            return None
        records = [record for _, body in rows if (record := self._parse(body)) is not None]
        scored = [r for r in records if r.get("boxes") and isinstance(r.get("score"), (int, float))]
        boxes = max(scored, key=lambda r: r["score"])["boxes"] if scored else []
        return {
            "summary": summary,
            "records": records,
            "boxes": [b for b in boxes if isinstance(b, dict) and all(_is_int(b.get(k)) for k in "xywh")],
            "trace": self.trace(event_id),
        }

    def cameras(self) -> list[str]:
        return sorted(camera for (camera,) in self._query("SELECT DISTINCT camera FROM events") if camera)

    def latest_thresholds(self) -> dict[str, float]:
        """Each camera's threshold as its latest event states it."""
        rows = self._query("SELECT camera, body FROM events WHERE id IN (SELECT MAX(id) FROM events GROUP BY camera)")
        found = {}
        for camera, body in rows:
            record = self._parse(body)
            if record is not None and isinstance(record.get("threshold"), (int, float)):
                found[camera] = float(record["threshold"])
        return found

    def media_file(self, event_id: str, name: str) -> Path | None:
        """The path of one of an event's media files, if it exists and lies where it should."""
        if not EVENT_ID.match(event_id) or name not in MEDIA_NAMES:
            return None
        path = self.media_root / event_id / name
        try:
            resolved, root = path.resolve(strict=True), self.media_root.resolve(strict=True)
        except OSError:
            return None
        return path if resolved.is_relative_to(root) and resolved.is_file() else None

    def trace(self, event_id: str) -> dict | None:
        """The event's score trace (scores.json), checked: (capture time, smoothed, raw) per frame."""
        path = self.media_root / event_id / "scores.json"
        try:
            if not EVENT_ID.match(event_id) or path.stat().st_size > MAX_TRACE_BYTES:
                return None
            data = json.loads(path.read_text())
            frames = [(_number(f[2]), _number(f[3]), _number(f[4])) for f in data["frames"]]
            return {
                "threshold": _number(data["threshold"]),
                "complete": data.get("complete") is True,
                "frames": frames,
            }
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None

    def _parse(self, body: str) -> dict | None:
        try:
            record = json.loads(body)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            self._warn("a row that is not a JSON object")
            return None
        return record

    def _summary(self, row: int, first_body: str, last_body: str) -> EventSummary | None:
        first, last = self._parse(first_body), self._parse(last_body)
        if first is None or last is None:
            return None
        try:
            event_id, camera = first["event_id"], first["camera"]
            if not isinstance(event_id, str) or not EVENT_ID.match(event_id) or not isinstance(camera, str):
                raise ValueError("bad event id or camera")
            start, latest = _number(first["capture_time"]), _number(last["capture_time"])
            ended = last.get("type") == "end"
            reason = last.get("reason") if isinstance(last.get("reason"), str) else None
            frames = last.get("frames")
            return EventSummary(
                id=event_id,
                row=row,
                camera=camera,
                start=start,
                end=latest if ended else None,
                duration=max(0.0, latest - start),
                frames=frames if _is_int(frames) else 0,
                peak_score=_number(last["peak_score"]),
                threshold=_number(last["threshold"]),
                reason=reason if ended else None,
                start_frame=_optional_int(first.get("frame_index")),
                media={name: f"/media/{event_id}/{name}" for name in MEDIA_NAMES if self.media_file(event_id, name)},
            )
        except (KeyError, ValueError) as e:
            self._warn(f"an event row without the fields the alerter writes ({e})")
            return None

    def _warn(self, what: str) -> None:
        if not self._warned:
            log.warning("event log %s: skipping %s (logged once)", self.event_log, what)
            self._warned = True


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
