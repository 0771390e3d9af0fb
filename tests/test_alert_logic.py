"""The alert stage's pieces in isolation: reordering, the event state machine, the durable log."""

import sqlite3
import threading

import numpy as np
import pytest
from prometheus_client import REGISTRY

from streamer.pipeline.checkpoint import Checkpoint
from streamer.pipeline.events import EventLog, EventTracker, read_events, top_boxes
from streamer.pipeline.messages import Message, MessageError
from streamer.pipeline.reorder import Reorder
from streamer.pipeline.watch import CameraWatch


def msg(seq, stream="s1", camera="cam-r", reset=None, kind="scores"):
    header = {"kind": kind, "camera": camera, "stream": stream, "seq": seq}
    if kind != "end":
        header["reset"] = seq == 0 if reset is None else reset
    return Message(header, {})


def seqs(messages):
    return [m.seq for m in messages]


def lost(camera):
    return REGISTRY.get_sample_value("vad_frames_dropped_total", {"camera": camera, "reason": "lost"}) or 0


def test_reorder_releases_in_sequence():
    r = Reorder("cam-a", max_pending=8, timeout=1.0)
    assert seqs(r.push(msg(1, camera="cam-a"), 0.0)) == []
    assert seqs(r.push(msg(2, camera="cam-a"), 0.0)) == []
    assert seqs(r.push(msg(0, camera="cam-a"), 0.0)) == [0, 1, 2]
    assert seqs(r.push(msg(3, camera="cam-a"), 0.0)) == [3] and len(r) == 0


def test_reorder_skips_a_missing_frame_after_the_timeout_and_counts_it():
    r = Reorder("cam-b", max_pending=8, timeout=1.0)
    before = lost("cam-b")
    r.push(msg(0, camera="cam-b"), 0.0)
    assert seqs(r.push(msg(2, camera="cam-b"), 0.1)) == []
    assert seqs(r.expire(0.5)) == []
    assert seqs(r.expire(1.2)) == [2]
    assert lost("cam-b") - before == 1
    with pytest.raises(MessageError) as error:
        r.push(msg(1, camera="cam-b"), 1.3)  # the skipped one turns up after all
    assert error.value.reason == "late"


def test_reorder_skips_when_too_much_waits():
    r = Reorder("cam-c", max_pending=3, timeout=100.0)
    r.push(msg(0, camera="cam-c"))
    for seq in (2, 3, 4):
        assert seqs(r.push(msg(seq, camera="cam-c"))) == []
    assert seqs(r.push(msg(5, camera="cam-c"))) == [2, 3, 4, 5]


def rejected(reorder, message, now):
    with pytest.raises(MessageError) as error:
        reorder.push(message, now)
    return error.value.reason


def test_reorder_follows_a_capture_that_ended_its_stream_and_started_a_new_one():
    r = Reorder("cam-d", max_pending=8, timeout=1.0)
    assert seqs(r.push(msg(0, "old", "cam-d"), 0.0)) == [0]
    r.push(msg(2, "old", "cam-d"), 0.1)
    r.push(msg(3, "old", "cam-d", kind="end"), 0.2)
    assert seqs(r.push(msg(0, "new", "cam-d"), 0.3)) == [2, 3, 0]  # the old run's leftovers first
    assert rejected(r, msg(1, "old", "cam-d"), 0.4) == "late"  # the old run is over for good


def test_a_foreign_stream_cannot_take_the_camera_while_its_stream_delivers():
    r = Reorder("cam-g", max_pending=8, timeout=1.0)
    lost_before = lost("cam-g")
    assert seqs(r.push(msg(0, "real", "cam-g"), 0.0)) == [0]
    assert rejected(r, msg(0, "evil", "cam-g"), 0.1) == "foreign_stream"  # even as a plausible start
    assert rejected(r, msg(10**12, "evil", "cam-g"), 0.2) == "foreign_stream"
    for seq in range(1, 5):
        assert seqs(r.push(msg(seq, "real", "cam-g"), 0.2 + seq / 10)) == [seq]
    assert r.position == ("real", 5) and lost("cam-g") == lost_before


def test_a_quiet_stream_gives_way_to_a_plausible_start_and_comes_back_when_that_one_goes_quiet():
    r = Reorder("cam-h", max_pending=8, timeout=1.0)
    r.push(msg(0, "a", "cam-h"), 0.0)
    r.push(msg(1, "a", "cam-h"), 0.1)  # then stream a goes quiet (its camera is being reconnected)
    assert rejected(r, msg(0, "b", "cam-h"), 0.5) == "foreign_stream"  # not quiet long enough yet
    assert rejected(r, msg(5000, "b", "cam-h"), 1.5) == "foreign_stream"  # quiet, but no plausible start
    assert seqs(r.push(msg(5001, "b", "cam-h", reset=True), 1.6)) == [5001]  # a new recording takes over
    assert rejected(r, msg(2, "a", "cam-h", reset=True), 2.0) == "foreign_stream"  # b delivers now
    assert seqs(r.push(msg(2, "a", "cam-h", reset=True), 2.7)) == [2]  # b quiet for 1 s: a was never retired
    assert r.position == ("a", 3)


def test_a_number_far_beyond_the_window_is_rejected_while_the_stream_delivers():
    r = Reorder("cam-i", max_pending=8, timeout=1.0)
    lost_before = lost("cam-i")
    r.push(msg(0, camera="cam-i"), 0.0)
    assert rejected(r, msg(10**12, camera="cam-i"), 0.1) == "seq_out_of_range"
    assert seqs(r.push(msg(4 * 8, camera="cam-i"), 0.2)) == []  # a gap inside the window waits as usual
    assert seqs(r.expire(1.3)) == [32] and lost("cam-i") - lost_before == 31
    # Quiet for longer than the timeout, the stream resumes where it is: a jump, not 10**12 lost frames.
    assert seqs(r.push(msg(10**12, camera="cam-i"), 2.5)) == [10**12]
    assert lost("cam-i") - lost_before == 31 and r.position == ("s1", 10**12 + 1)


def test_a_huge_gap_is_counted_in_one_step():
    r = Reorder("cam-j", max_pending=10**12, timeout=1.0)
    lost_before = lost("cam-j")
    r.push(msg(0, camera="cam-j"), 0.0)
    done = []
    worker = threading.Thread(
        target=lambda: done.append(seqs(r.push(msg(3 * 10**12, camera="cam-j"), 0.1) + r.expire(2.0))),
        daemon=True,
    )
    worker.start()
    worker.join(5)
    assert done == [[3 * 10**12]], "stepping through the gap one number at a time"
    assert lost("cam-j") - lost_before == 3 * 10**12 - 1


def test_reorder_joins_a_stream_midway():
    r = Reorder("cam-e", max_pending=8, timeout=1.0)
    assert seqs(r.push(msg(5000, camera="cam-e"))) == [5000]


def position(seq):
    return {"seq": seq, "frame_index": seq + 1, "clip": "", "capture_time": 100.0 + seq}


def run_tracker(scores, end_after=2, update_every=3):
    tracker = EventTracker("cam", threshold=1.0, end_after=end_after, update_every=update_every, model={"m": 1})
    events = [tracker.frame(position(i), s, lambda: []) for i, s in enumerate(scores)]
    return tracker, [e for e in events if e]


def test_a_long_crossing_is_one_event():
    tracker, events = run_tracker([0.1] * 3 + [2.0] * 80 + [0.1] * 5, end_after=2, update_every=30)
    assert [e["type"] for e in events] == ["start", "update", "update", "end"]
    assert len({e["event_id"] for e in events}) == 1
    assert events[0]["seq"] == 3 and events[-1]["seq"] == 84 and events[-1]["reason"] == "below_threshold"
    assert events[-1]["peak_score"] == 2.0 and not tracker.is_open


def test_a_short_dip_does_not_end_an_event():
    _, events = run_tracker([2.0, 0.5, 2.0, 0.5, 0.5, 0.5], end_after=2, update_every=100)
    assert [(e["type"], e["seq"]) for e in events] == [("start", 0), ("end", 4)]


def test_close_ends_an_open_event_only():
    tracker, events = run_tracker([2.0, 2.0])
    assert tracker.close(position(1), "shutdown")["reason"] == "shutdown"
    assert tracker.close(position(2), "shutdown") is None


def test_top_boxes_are_the_highest_patches_above_threshold():
    scores = np.array([0.5, 3.0, 1.0, 2.0], np.float32)
    boxes = np.array([[0, 0, 30, 30], [15, 0, 30, 30], [30, 0, 30, 30], [45, 0, 30, 30]], np.int32)
    assert top_boxes(scores, boxes, 1.0, 2) == [
        {"x": 15, "y": 0, "w": 30, "h": 30, "score": 3.0},
        {"x": 45, "y": 0, "w": 30, "h": 30, "score": 2.0},
    ]
    assert top_boxes(scores, boxes, 5.0, 2) == [{"x": 15, "y": 0, "w": 30, "h": 30, "score": 3.0}]  # none above
    assert top_boxes(-scores, boxes, 5.0, 2) == []  # nothing above normal either


def test_event_log_is_durable_sqlite_in_wal_mode(tmp_path):
    path = tmp_path / "log" / "events.sqlite"
    log = EventLog(path)
    _, events = run_tracker([2.0] * 4 + [0.0] * 2)
    for event in events:
        log.append(event)
    assert read_events(path) == events  # readable by another connection before close: committed
    log.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reorder_resumed_from_a_checkpoint_counts_what_a_killed_alerter_had_in_flight():
    r = Reorder("cam-f", max_pending=8, timeout=1.0, position=("s1", 10))
    before = lost("cam-f")
    assert seqs(r.push(msg(13, camera="cam-f"), 0.0)) == []  # 10-12 were in the killed alerter's hands
    assert seqs(r.expire(1.5)) == [13] and lost("cam-f") - before == 3
    with pytest.raises(MessageError):
        r.push(msg(9, camera="cam-f"))  # processed before the kill
    assert r.position == ("s1", 14)


def test_a_checkpoint_keeps_the_last_record_across_processes(tmp_path):
    path = tmp_path / "state" / "capture-cam.json"
    first = Checkpoint(path)
    assert first.read() is None
    first.write({"stream": "abc", "next_seq": 123456})
    first.write({"stream": "abc", "next_seq": 7})  # shorter: the padding hides the longer record's tail
    assert Checkpoint(path).read() == {"stream": "abc", "next_seq": 7}  # what a restarted process finds
    first.clear()
    assert Checkpoint(path).read() is None


def test_a_camera_is_blind_only_while_every_one_of_its_messages_is_rejected():
    watch = CameraWatch("cam-w", after=10.0)
    for t in range(0, 9):
        watch.rejected(float(t))
    assert not watch.blind(9.0)  # rejected for 9 s: not yet
    watch.rejected(10.0)
    assert watch.blind(10.0) and watch.blind(19.0)
    assert not watch.blind(20.5)  # nothing at all for 10 s: not blind, silent (vad_camera_up says why)
    watch.rejected(21.0)
    watch.accepted()
    assert not watch.blind(21.0) and not watch.blind(40.0)
