"""Webhook destination: each event of the configured types POSTed as JSON, one request per event.

A 2xx answer delivers the event; anything else (an error status, a redirect, a
refused connection, a timeout) fails the attempt and the notifier retries the
same event with backoff, so events arrive in log order. Redirects are not
followed: a POST that a redirect would turn into a GET, or send with its
signature to another host, is not delivered.

Headers: Content-Type application/json, Idempotency-Key (see delivery.py), the
config's own headers, and with a secret X-VAD-Signature: sha256=<hex>, the
HMAC-SHA256 of the exact body bytes under the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import urllib.error
import urllib.request

from . import delivery
from .notify_config import WebhookConfig

SIGNATURE_HEADER = "X-VAD-Signature"
USER_AGENT = "vad-stream-notifier"
MAX_ANSWER_BYTES = 200  # of an error answer, for the log


def signature(secret: str, payload: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx answer becomes an HTTPError: a failed attempt


def _answer_text(error: urllib.error.HTTPError) -> str:
    """The start of an error answer's body, for the log."""
    try:
        return error.read(MAX_ANSWER_BYTES).decode(errors="replace").strip()
    except (OSError, http.client.HTTPException, AttributeError):  # no body, or a connection already gone
        return ""
    finally:
        error.close()


class WebhookDestination:
    batch_size = 1  # one request per event: the cursor moves with each answer

    def __init__(self, cfg: WebhookConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.types = tuple(cfg.types)
        self.where = cfg.address
        self.opener = urllib.request.build_opener(_NoRedirects)

    def request(self, event: dict) -> urllib.request.Request:
        payload = delivery.body(event)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": delivery.idempotency_key(event),
            **self.cfg.headers,
        }
        if self.cfg.secret:
            headers[SIGNATURE_HEADER] = signature(self.cfg.secret, payload)
        return urllib.request.Request(self.cfg.url, data=payload, headers=headers, method="POST")

    def deliver(self, events: list[dict]) -> None:
        for done, event in enumerate(events):
            try:
                with self.opener.open(self.request(event), timeout=self.cfg.timeout_seconds) as answer:
                    answer.read(MAX_ANSWER_BYTES)
            except urllib.error.HTTPError as e:
                text = _answer_text(e)
                raise delivery.DeliveryError(
                    f"HTTP {e.code} {e.reason}" + (f": {text}" if text else ""), done
                ) from None
            except urllib.error.URLError as e:
                raise delivery.DeliveryError(str(e.reason), done) from None
            except (OSError, http.client.HTTPException) as e:  # timeouts, connections reset mid-answer
                raise delivery.DeliveryError(f"{type(e).__name__}: {e}", done) from None

    def sync(self, last_events: list[dict]) -> None:
        """Nothing to restore: a webhook keeps no state."""

    def close(self) -> None:
        """Nothing to close: each request has its own connection."""
