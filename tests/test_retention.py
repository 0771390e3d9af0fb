"""Retention: ended events' media and log rows go by age and by disk use, oldest first; open events stay."""

from __future__ import annotations

import os
import uuid

import pytest

from streamer.pipeline.events import EventLog, read_events
from streamer.pipeline.media import SNAPSHOT_DIR
from streamer.pipeline.retention import ORPHAN_GRACE_SECONDS, Retention
from streamer.pipeline.review_config import RetentionConfig

DAY = 86400.0
MB = 1_000_000


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def add_event(run_dir, log: EventLog, at: float, media_bytes: int = MB, ended: bool = True) -> str:
    """An event logged (start, and end) at time `at`, with `media_bytes` of files in its media folder."""
    event_id = uuid.uuid4().hex
    base = {"event_id": event_id, "camera": "cam1", "time": at, "seq": 0, "score": 3.0, "boxes": []}
    log.append({**base, "type": "start"})
    if ended:
        log.append({**base, "type": "end", "time": at + 10})
    folder = run_dir / SNAPSHOT_DIR / event_id
    folder.mkdir(parents=True)
    (folder / "start.jpg").write_bytes(b"j" * (media_bytes // 2))
    (folder / "clip.mp4").write_bytes(b"v" * (media_bytes - media_bytes // 2))
    os.utime(folder / "start.jpg", (at, at))
    os.utime(folder / "clip.mp4", (at, at))
    os.utime(folder, (at, at))
    return event_id


@pytest.fixture
def run(tmp_path):
    log = EventLog(tmp_path / "events.sqlite")
    yield tmp_path, log
    log.close()


def remaining(run_dir, log: EventLog) -> tuple[set[str], set[str]]:
    """(events with rows in the log, events with a media folder)."""
    rows = {event["event_id"] for event in read_events(log.path)}
    return rows, {p.name for p in (run_dir / SNAPSHOT_DIR).iterdir()}


def test_events_older_than_the_retention_go_with_their_rows_and_files(run):
    run_dir, log = run
    now = 100 * DAY
    old = [add_event(run_dir, log, now - days * DAY) for days in (40, 31)]
    recent = [add_event(run_dir, log, now - days * DAY) for days in (29, 1)]
    clock = Clock(now)
    retention = Retention(run_dir, log.path, RetentionConfig(days=30, max_mb=None), clock)
    pruned = retention.prune()
    assert (pruned.events, pruned.folders, pruned.bytes) == (2, 2, 2 * MB)
    assert remaining(run_dir, log) == (set(recent), set(recent))
    clock.now += 2 * DAY  # time moves on: the 29-day-old one passes 30 days
    assert retention.prune().events == 1
    assert remaining(run_dir, log) == ({recent[1]}, {recent[1]})
    assert not set(old) & remaining(run_dir, log)[0]


def test_over_the_disk_cap_the_oldest_ended_events_go_first_and_open_ones_stay(run):
    run_dir, log = run
    now = 10 * DAY
    ids = [add_event(run_dir, log, now - hours * 3600, media_bytes=3 * MB) for hours in (5, 4, 3, 2)]
    still_open = add_event(run_dir, log, now - 6 * 3600, media_bytes=3 * MB, ended=False)  # the oldest of all
    retention = Retention(run_dir, log.path, RetentionConfig(days=None, max_mb=7), Clock(now))
    pruned = retention.prune()
    # 15 MB against a 7 MB cap: the three oldest ended events go, the open one stays though it is older.
    assert (pruned.events, pruned.bytes, pruned.kept_bytes) == (3, 9 * MB, 6 * MB)
    assert remaining(run_dir, log) == ({ids[3], still_open}, {ids[3], still_open})
    assert retention.prune().events == 0  # under the cap: nothing more


def test_media_folders_without_rows_go_by_age_after_a_grace_time_and_other_files_are_left(run):
    run_dir, log = run
    now = 50 * DAY
    kept = add_event(run_dir, log, now - DAY)
    orphan_old, orphan_new = uuid.uuid4().hex, uuid.uuid4().hex
    for name, age in ((orphan_old, 40 * DAY), (orphan_new, ORPHAN_GRACE_SECONDS / 2)):
        folder = run_dir / SNAPSHOT_DIR / name
        folder.mkdir()
        (folder / "start.jpg").write_bytes(b"j")
        os.utime(folder / "start.jpg", (now - age, now - age))
        os.utime(folder, (now - age, now - age))
    (run_dir / SNAPSHOT_DIR / "notes.txt").write_text("the operator's own file")
    outside = run_dir / "elsewhere"
    outside.mkdir()
    (outside / "precious").write_text("not ours")
    link = run_dir / SNAPSHOT_DIR / uuid.uuid4().hex
    link.symlink_to(outside, target_is_directory=True)
    Retention(run_dir, log.path, RetentionConfig(days=30, max_mb=None), Clock(now)).prune()
    left = {p.name for p in (run_dir / SNAPSHOT_DIR).iterdir()}
    assert orphan_old not in left and {kept, orphan_new, "notes.txt", link.name} <= left
    assert (outside / "precious").exists()  # a link is never followed


def test_no_limits_prune_nothing_and_a_missing_log_is_no_error(tmp_path):
    retention = Retention(tmp_path, tmp_path / "events.sqlite", RetentionConfig(days=None, max_mb=None), Clock(0))
    assert retention.prune().events == 0


def test_a_folder_that_grew_since_the_last_pass_is_counted_anew(run):
    run_dir, log = run
    now = 10 * DAY
    older, newer = (add_event(run_dir, log, now - hours * 3600, media_bytes=MB) for hours in (2, 1))
    retention = Retention(run_dir, log.path, RetentionConfig(days=None, max_mb=3), Clock(now))
    assert retention.prune().kept_bytes == 2 * MB  # under the cap
    clip = run_dir / SNAPSHOT_DIR / newer / "clip.mp4"
    partial = clip.with_name(".partial.clip.mp4")
    partial.write_bytes(b"v" * 2 * MB)  # a finished clip replaces the old one, as the clip encoder does
    os.replace(partial, clip)
    pruned = retention.prune()
    assert pruned.events == 1 and pruned.kept_bytes == MB // 2 + 2 * MB
    assert remaining(run_dir, log) == ({newer}, {newer})
