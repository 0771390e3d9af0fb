import json

import numpy as np
import pytest
import zmq

from streamer.pipeline import messages
from streamer.pipeline.messages import MessageError, decode, derive, encode

LIMIT = 1 << 20


def frame_parts(image=None, **overrides):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) if image is None else image
    header = {
        "kind": "frame",
        "camera": "cam1",
        "stream": "abc",
        "seq": 7,
        "t_capture": 1.5,
        "index": 8,
        "clip": "",
        "reset": False,
        **overrides,
    }
    return encode(header, {"image": image})


def as_bytes(parts):
    return [bytes(memoryview(p)) for p in parts]


def rewrite_header(parts, change):
    header = json.loads(parts[0])
    change(header)
    return [json.dumps(header).encode(), *parts[1:]]


def test_frame_round_trip_over_a_socket_without_pickle(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (240, 360), dtype=np.uint8)
    with zmq.Context() as ctx, ctx.socket(zmq.PAIR) as a, ctx.socket(zmq.PAIR) as b:
        a.bind(f"ipc://{tmp_path}/pair")
        b.connect(f"ipc://{tmp_path}/pair")
        messages.send(a, frame_parts(image))
        parts = b.recv_multipart(copy=False)
    header = json.loads(parts[0].bytes)
    assert header["arrays"] == [{"shape": [240, 360], "dtype": "uint8"}] and header["v"] == messages.VERSION
    message = decode(parts, LIMIT)
    assert message.kind == "frame" and message.camera == "cam1" and message.seq == 7
    np.testing.assert_array_equal(message.arrays["image"], image)
    assert not message.arrays["image"].flags.owndata  # a view of the received buffer, not a copy


def test_derive_keeps_the_frame_position_and_adds_fields():
    frame = decode(as_bytes(frame_parts()), LIMIT)
    patches = np.zeros((2, 1, 30, 30), np.uint8)
    active = np.array([True, False, True])
    message = decode(
        as_bytes(derive(frame, "patches", {"patches": patches, "active": active}, frame_shape=[3, 4], moving=2)),
        LIMIT,
    )
    assert {k: message.header[k] for k in ("camera", "stream", "seq", "index", "reset")} == {
        "camera": "cam1",
        "stream": "abc",
        "seq": 7,
        "index": 8,
        "reset": False,
    }
    np.testing.assert_array_equal(message.arrays["active"], active)
    assert message.arrays["patches"].shape == (2, 1, 30, 30)


@pytest.mark.parametrize(
    "parts, reason",
    [
        ([b"\xff\xfe not json"], "malformed"),
        ([b"[1, 2]"], "malformed"),
        ([], "malformed"),
        ([b"{" + b" " * messages.MAX_HEADER_BYTES + b"}"], "malformed"),
        ([b"x" * (LIMIT + 1)], "oversized"),
        ([b"[" * 4000], "malformed"),  # nesting deep enough to exhaust the JSON parser's recursion
    ],
)
def test_garbage_is_rejected_with_a_reason(parts, reason):
    with pytest.raises(MessageError) as error:
        decode(parts, LIMIT)
    assert error.value.reason == reason


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda h: h.update(kind="video"), "unknown message kind"),
        (lambda h: h.update(v=99), "protocol version"),
        (lambda h: h.pop("seq"), "missing ['seq']"),
        (lambda h: h.update(extra=1), "unknown ['extra']"),
        (lambda h: h.update(seq="7"), "'seq' is not a int"),
        (lambda h: h.update(reset=1), "'reset' is not a bool"),
        (lambda h: h.update(camera="../../etc"), "bad camera id"),
        (lambda h: h.update(seq=-1), "sequence number"),
        (lambda h: h.update(arrays=[{"shape": [3, 4], "dtype": "float64"}]), "must be 2-D uint8"),
        (lambda h: h.update(arrays=[{"shape": [4, 4], "dtype": "uint8"}]), "is 16 bytes, got 12"),
        (lambda h: h.update(arrays=[]), "needs 1 arrays"),
        (lambda h: h.update(seq=2**70), "'seq' is not a int"),
        (lambda h: h.update(t_capture=float("nan")), "not plain JSON"),
        # 2**32 x 2**32 bytes wraps to 0 in int64 arithmetic; the buffer is empty
        (lambda h: h.update(arrays=[{"shape": [2**32, 2**32], "dtype": "uint8"}]), "is 18446744073709551616 bytes"),
    ],
)
def test_bad_headers_are_rejected_as_malformed(change, fragment):
    with pytest.raises(MessageError) as error:
        decode(rewrite_header(as_bytes(frame_parts()), change), LIMIT)
    assert error.value.reason == "malformed" and fragment in str(error.value)


def test_a_missing_buffer_is_malformed():
    with pytest.raises(MessageError, match="message has 0"):
        decode(as_bytes(frame_parts())[:1], LIMIT)


def test_size_limit_counts_every_part():
    parts = as_bytes(frame_parts(np.zeros((100, 100), np.uint8)))
    decode(parts, 10_000 + len(parts[0]))
    with pytest.raises(MessageError) as error:
        decode(parts, 10_000 + len(parts[0]) - 1)
    assert error.value.reason == "oversized"


def test_infinite_numbers_and_absurd_frame_shapes_are_malformed():
    text = json.dumps(json.loads(as_bytes(frame_parts())[0])).replace('"t_capture": 1.5', '"t_capture": 1e999')
    with pytest.raises(MessageError, match="'t_capture' is not a number"):
        decode([text.encode(), bytes(12)], LIMIT)
    patches = np.zeros((0, 1, 30, 30), np.uint8)
    header = {**json.loads(as_bytes(frame_parts())[0]), "kind": "patches", "frame_shape": [10**6, 10**6], "moving": 0}
    del header["v"], header["arrays"]
    with pytest.raises(MessageError, match="'frame_shape' is not a shape"):
        decode(as_bytes(encode(header, {"patches": patches, "active": np.zeros(0, bool)})), LIMIT)


def test_receive_reads_an_overlong_message_without_keeping_it(tmp_path):
    with zmq.Context() as ctx, ctx.socket(zmq.PAIR) as a, ctx.socket(zmq.PAIR) as b:
        a.bind(f"ipc://{tmp_path}/pair")
        b.connect(f"ipc://{tmp_path}/pair")
        a.send_multipart([b"{}"] + [b""] * 10_000)
        messages.send(a, frame_parts())
        with pytest.raises(MessageError, match="10001 parts, at most 3"):
            messages.receive(b)
        assert decode(messages.receive(b), LIMIT).seq == 7  # the next message is intact
