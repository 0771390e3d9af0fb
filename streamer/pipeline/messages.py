"""Messages between pipeline stages: a JSON header plus raw array buffers, never pickle.

A message is one ZeroMQ multipart message:

  part 0     UTF-8 JSON object, the header (protocol version, kind, camera, stream,
             seq, capture time, ...) whose "arrays" entry describes the parts after it
             as [{"shape": [...], "dtype": "uint8"}, ...]
  part 1..n  the raw C-order bytes of each array, sent without copying

Kinds, in pipeline order:

  frame    capture -> patcher   image (H, W) uint8 grayscale
  patches  patcher -> scorer    patches (N, C, S, S) uint8 that passed the gate; active (P,) bool per grid position
                                (header `moving`: positions the card's gate passes, even with the gate off)
  scores   scorer  -> alerter   patch_scores (P,) float32, calibrated, one per grid position
  end      any stage onwards    the camera's stream is over (source finished or shut down)
  preview  capture -> alerter   jpeg (N,) uint8: the frame, downscaled, for event media (header `fps`: the
                                source's frame rate, 0 if unknown); published, so a slow reader never holds up capture

`seq` numbers a capture process's messages 0, 1, 2, ... with no gaps, so the
alerter can put results from several scorers back in order; `stream` names the
capture process run, so a restarted capture (seq from 0 again) is recognised.
`reset` marks the first frame of a new recording (a new clip, a reconnected
camera): stateful stages forget the past there.

All checking happens in `receive` and `decode`: the number of parts first (a
hostile peer could send millions of empty ones), then sizes, then header fields
and types, then the array descriptors against the buffers that arrived. Anything
wrong raises `MessageError` with a short reason for the rejection metric; stages
count the message and carry on. Receiving sockets also set ZeroMQ's MAXMSGSIZE
(runtime.make_socket), so libzmq refuses an oversized part before allocating it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np
import zmq

VERSION = 2  # 2: `moving` in patches and scores headers
MAX_HEADER_BYTES = 4096
MAX_INT = 2**63  # header integers beyond this are not from a real stream
MAX_FRAME_SIDE = 16384  # pixels; bounds the patch grid a frame_shape can make a stage compute
CAMERA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Header fields by kind; "number" accepts int or float, "shape" is a [height, width] pair.
_POSITION = {"index": "int", "clip": "str", "reset": "bool"}
FIELDS: dict[str, dict[str, str]] = {
    "frame": _POSITION,
    "patches": {**_POSITION, "frame_shape": "shape", "moving": "int"},
    "scores": {
        **_POSITION,
        "frame_shape": "shape",
        "score": "number",
        "active": "int",
        "moving": "int",
        "t_scored": "number",
        "model": "str",
    },
    "end": {"reason": "str"},
    "preview": {**_POSITION, "fps": "number"},
}
COMMON = {
    "v": "int",
    "kind": "str",
    "camera": "str",
    "stream": "str",
    "seq": "int",
    "t_capture": "number",
    "arrays": "list",
}
# The arrays each kind carries: (name, number of dimensions, dtype).
ARRAYS: dict[str, list[tuple[str, int, str]]] = {
    "frame": [("image", 2, "uint8")],
    "patches": [("patches", 4, "uint8"), ("active", 1, "bool")],
    "scores": [("patch_scores", 1, "float32")],
    "end": [],
    "preview": [("jpeg", 1, "uint8")],
}
MAX_PARTS = 1 + max(len(arrays) for arrays in ARRAYS.values())


class MessageError(ValueError):
    """A message that cannot be used; `reason` labels the rejection metric."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass
class Message:
    header: dict
    arrays: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def camera(self) -> str:
        return self.header["camera"]

    @property
    def seq(self) -> int:
        return self.header["seq"]


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> list:
    """Multipart parts for a header (without "v" and "arrays") and its arrays, in ARRAYS order."""
    arrays = arrays or {}
    ordered = [np.ascontiguousarray(arrays[name]) for name, _, _ in ARRAYS[header["kind"]]]
    full = {"v": VERSION, **header, "arrays": [{"shape": list(a.shape), "dtype": a.dtype.name} for a in ordered]}
    return [json.dumps(full, separators=(",", ":")).encode()] + ordered


def derive(message: Message, kind: str, arrays: dict[str, np.ndarray] | None = None, **fields) -> list:
    """Parts of the next stage's message about the same frame: stream position kept, `fields` added."""
    keep = ("camera", "stream", "seq", "t_capture", *FIELDS["frame"])
    header = {key: message.header[key] for key in keep if key in message.header}
    return encode({**header, "kind": kind, **fields}, arrays)


def send(socket: zmq.Socket, parts: list, flags: int = 0) -> None:
    """Send without copying the array buffers (pyzmq still copies parts under zmq.COPY_THRESHOLD)."""
    socket.send_multipart(parts, flags=flags, copy=False)


def receive(socket: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """One multipart message's parts, without copies; MessageError if it has more than MAX_PARTS.

    The surplus parts of an overlong message are read and dropped one by one, never all held.
    """
    frame = socket.recv(flags, copy=False)
    parts, count = [frame], 1
    while frame.more:
        frame = socket.recv(copy=False)
        count += 1
        if count <= MAX_PARTS:
            parts.append(frame)
    if count > MAX_PARTS:
        raise MessageError("malformed", f"{count} parts, at most {MAX_PARTS} expected")
    return parts


def decode(parts: list, max_bytes: int) -> Message:
    """Check and unpack received parts (zmq.Frame or bytes); arrays are views of the received buffers, not copies."""
    buffers = [memoryview(p.buffer if isinstance(p, zmq.Frame) else p) for p in parts]
    total = sum(b.nbytes for b in buffers)
    if total > max_bytes:
        raise MessageError("oversized", f"{total} bytes exceeds the {max_bytes}-byte limit")
    if not buffers or buffers[0].nbytes > MAX_HEADER_BYTES:
        raise MessageError("malformed", f"missing header or header over {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(bytes(buffers[0]), parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, NaN/Infinity, nesting too deep
        raise MessageError("malformed", f"header is not plain JSON ({type(e).__name__}: {e})") from None
    check_header(header)
    return Message(header, _arrays(header, buffers[1:]))


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number a stage can use")


def check_header(header) -> None:
    if not isinstance(header, dict):
        raise MessageError("malformed", "header is not a JSON object")
    kind = header.get("kind")
    if kind not in FIELDS:
        raise MessageError("malformed", f"unknown message kind {kind!r}")
    if header.get("v") != VERSION:
        raise MessageError("malformed", f"protocol version {header.get('v')!r}, expected {VERSION}")
    expected = {**COMMON, **FIELDS[kind]}
    missing = sorted(set(expected) - set(header))
    unknown = sorted(set(header) - set(expected))
    if missing or unknown:
        raise MessageError("malformed", f"{kind} header: missing {missing}, unknown {unknown}")
    for name, kind_of_value in expected.items():
        if not _is(kind_of_value, header[name]):
            raise MessageError("malformed", f"header field {name!r} is not a {kind_of_value}: {header[name]!r}")
    if not CAMERA_ID.match(header["camera"]) or len(header["stream"]) > 64 or header["seq"] < 0:
        raise MessageError("malformed", "bad camera id, stream id or sequence number")


def _is(kind: str, value) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT < value < MAX_INT
    if kind == "number":
        return _is("int", value) or (isinstance(value, float) and math.isfinite(value))  # 1e999 parses as inf
    if kind == "shape":
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(_is("int", v) and 0 < v <= MAX_FRAME_SIDE for v in value)
        )
    return isinstance(value, {"str": str, "bool": bool, "list": list}[kind])


def _arrays(header: dict, buffers: list[memoryview]) -> dict[str, np.ndarray]:
    specs, described = ARRAYS[header["kind"]], header["arrays"]
    if len(described) != len(specs) or len(buffers) != len(specs):
        raise MessageError(
            "malformed",
            f"{header['kind']} needs {len(specs)} arrays; header has {len(described)}, message has {len(buffers)}",
        )
    arrays = {}
    for (name, ndim, dtype), info, buffer in zip(specs, described, buffers):
        shape = info.get("shape") if isinstance(info, dict) else None
        if (
            not isinstance(shape, list)
            or len(shape) != ndim
            or not all(_is("int", n) and n >= 0 for n in shape)
            or info.get("dtype") != dtype
        ):
            raise MessageError("malformed", f"array {name!r} must be {ndim}-D {dtype}, header says {info!r}")
        expected = math.prod(shape) * np.dtype(dtype).itemsize  # exact: a huge claimed shape cannot wrap around
        if buffer.nbytes != expected:
            raise MessageError("malformed", f"array {name!r} {shape} {dtype} is {expected} bytes, got {buffer.nbytes}")
        arrays[name] = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return arrays
