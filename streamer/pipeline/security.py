"""ZeroMQ CURVE for the pipeline's sockets (`security.curve`), and key pairs (`vad keys generate`).

Off by default: endpoints are then ipc:// or loopback only (see config). On, every
socket of every stage is encrypted and authenticated: a binding socket is a CURVE
server with the pipeline's key pair, a connecting socket presents the pipeline's
key pair and accepts only a server holding it. Stages on other hosts therefore
share the pipeline's key pair. Links between stages admit that key alone; the
alerter's events socket also admits the subscriber keys (`vad alerts`, each its
own pair) whose public halves are *.key files in `authorized_keys`, checked at
each handshake through pyzmq's ZAP authenticator.

Key files are plain text (ZeroMQ's certificate format), never pickled. Adding,
removing or overwriting a file in authorized_keys takes effect at the next
handshake, without a restart; when a key leaves the folder the alerter also drops
every subscriber connection once, so that a revoked subscriber connected before is
refused within a second while the others reconnect at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

STAGES_DOMAIN = "vad-stages"  # ZAP domain of the links between stages
EVENTS_DOMAIN = "vad-events"  # ZAP domain of the alerter's events socket


def read_key_file(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a key file; ValueError if it is missing, unreadable or not one."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such key file")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a key file ({e})") from None


def load_key_pair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file; ValueError if it is not one."""
    public, secret = read_key_file(path)
    if not secret:
        raise ValueError(f"{path} holds a public key only: give the .key_secret file")
    return public, secret


def load_public_key(path: str | os.PathLike) -> bytes:
    return read_key_file(path)[0]


def generate(folder: str | os.PathLike, name: str, authorize: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """NAME.key (public) and NAME.key_secret (owner-only) in `folder`; the public key copied into `authorize`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = (folder / f"{name}{suffix}" for suffix in (".key", ".key_secret"))
    if public.exists() or secret.exists():
        raise FileExistsError(f"{public} or {secret} exists already: keys are never overwritten")
    old_umask = os.umask(0o077)  # the secret file is born owner-only
    try:
        zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_umask)
    public.chmod(0o644)
    if authorize is not None:
        Path(authorize).mkdir(parents=True, exist_ok=True)
        (Path(authorize) / public.name).write_bytes(public.read_bytes())
    return public, secret


class AllowedKeys:
    """The public keys a CURVE server admits: its own, and the *.key files of a folder (if any).

    The folder is read at every handshake and its keys parsed again when the files'
    names or contents changed, so adding, deleting or overwriting a file (revoking a
    key, rotating one) counts from the next handshake on. The folder's own mtime
    would miss an overwrite, and a file's mtime can miss one made within a clock tick.
    """

    def __init__(self, own: bytes, folder: str | os.PathLike | None = None, clients: str = "clients"):
        self.own = own
        self.folder = Path(folder) if folder else None
        self.clients = clients  # what they are, for the log
        self._digest: bytes | None = None
        self._keys: set[bytes] = set()
        self._refused = 0

    def _contents_digest(self) -> bytes:
        digest = hashlib.sha256()
        for path in sorted(self.folder.glob("*.key")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.digest()

    def current(self) -> set[bytes]:
        """The keys admitted now; OSError or ValueError if the folder cannot be read."""
        if self.folder is not None:
            digest = self._contents_digest()
            if digest != self._digest:
                self._keys, self._digest = set(zmq.auth.load_certificates(self.folder)), digest
                log.info("CURVE: %d %s keys in %s", len(self._keys), self.clients, self.folder)
        return self._keys | {self.own}

    def callback(self, domain: str, key: bytes) -> bool:
        """Asked by the ZAP authenticator at each handshake."""
        try:
            admitted = key in self.current()
        except (OSError, ValueError) as e:
            log.error("CURVE: cannot read the authorized keys in %s (%s): refusing every client", self.folder, e)
            self._digest = None
            return False
        if not admitted:
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:  # a retrying client must not flood the log
                where = f"not in {self.folder}" if self.folder else "not the pipeline's key"
                log.warning(
                    "CURVE: refused a key for %s, %s (%d refusals so far; this one %s)",
                    self.clients,
                    where,
                    self._refused,
                    key.decode(),
                )
        return admitted


class Curve:
    """The CURVE settings a stage process applies to its sockets; a ZAP authenticator while it binds any.

    Two ZAP domains: links between stages admit the pipeline's own key only, so a
    subscriber's key cannot pull patches or push scores; the events socket admits
    the pipeline's key and the subscriber keys in `authorized_keys`.
    """

    def __init__(
        self, ctx: zmq.Context, secret_key: str | os.PathLike, authorized_keys: str | os.PathLike | None = None
    ):
        self.ctx = ctx
        self.public, self.secret = load_key_pair(secret_key)
        self.authorized_keys = authorized_keys
        self.authenticator: ThreadAuthenticator | None = None
        self._subscribers = AllowedKeys(self.public, authorized_keys, "subscribers")  # read from the stage's thread
        self._known: set[bytes] | None = None
        self._checked = float("-inf")

    def server(self, socket: zmq.Socket, events: bool = False) -> None:
        """Make `socket` a CURVE server: of the events (subscriber keys admitted) or of a link between stages."""
        if self.authenticator is None:
            self.authenticator = ThreadAuthenticator(self.ctx, log=log)
            self.authenticator.start()
            stages = AllowedKeys(self.public, clients="links between stages")
            self.authenticator.configure_curve_callback(STAGES_DOMAIN, stages)
            subscribers = AllowedKeys(self.public, self.authorized_keys, "subscribers")
            self.authenticator.configure_curve_callback(EVENTS_DOMAIN, subscribers)
        socket.zap_domain = (EVENTS_DOMAIN if events else STAGES_DOMAIN).encode()
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def client(self, socket: zmq.Socket) -> None:
        set_client_keys(socket, self.public, self.secret, server_key=self.public)

    def subscriber_revoked(self) -> bool:
        """Whether a subscriber key left authorized_keys since the last call (looked at once a second at most)."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return False
        self._checked = now
        try:
            keys = self._subscribers.current()
        except (OSError, ValueError):  # the authenticator refuses everyone meanwhile, and says so
            return False
        revoked = self._known is not None and bool(self._known - keys)
        self._known = keys
        return revoked

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()


def set_client_keys(socket: zmq.Socket, public: bytes, secret: bytes, server_key: bytes) -> None:
    """Make `socket` a CURVE client with this key pair that talks only to the server holding `server_key`."""
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_key


@contextmanager
def curve_for(ctx: zmq.Context, cfg) -> Iterator[Curve | None]:
    """A stage's Curve when `cfg` (security.curve) is enabled, else None; its authenticator stops on the way out."""
    if not cfg.enabled:
        yield None
        return
    curve = Curve(ctx, cfg.secret_key, cfg.authorized_keys)
    try:
        yield curve
    finally:
        curve.close()
