"""What every notification destination shares: the message body, its idempotency key, the error.

Delivery is at least once, so a receiver may get an event twice (a notifier
killed between the receiver's acknowledgement and the cursor's update, an
acknowledgement lost with the connection). Both copies carry the same
idempotency key, `EVENT_ID:TYPE:SEQ`, which names one record of the event log:
keep the keys seen for a while and drop repeats.
"""

from __future__ import annotations

import json


class DeliveryError(RuntimeError):
    """An attempt that failed; the first `delivered` events of the batch went through before it did."""

    def __init__(self, reason: str, delivered: int = 0):
        self.delivered = delivered
        super().__init__(reason)


def idempotency_key(event: dict) -> str:
    return f"{event['event_id']}:{event['type']}:{event['seq']}"


def body(event: dict) -> bytes:
    """The event as logged, with its idempotency key: the JSON every destination sends."""
    return json.dumps({"idempotency_key": idempotency_key(event), **event}, separators=(",", ":")).encode()
