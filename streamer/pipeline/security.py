"""ZeroMQ CURVE for the pipeline's sockets (`security.curve`), and key pairs (`vad keys generate`).

Off by default: endpoints are then ipc:// or loopback only (see config). On, every
socket of every stage is encrypted and authenticated: a binding socket is a CURVE
server with the pipeline's key pair and admits only clients whose public key is a
*.key file in `authorized_keys` (checked at each handshake through pyzmq's ZAP
authenticator); a connecting socket presents the pipeline's key pair and accepts
only a server holding it. Stages on other hosts therefore share the pipeline's key
pair; an alert subscriber (`vad alerts`) has its own, listed in authorized_keys.

Key files are plain text (ZeroMQ's certificate format), never pickled. Adding,
removing or overwriting a file in authorized_keys takes effect at the next
connection, without a restart; connections already made stay up until they drop
(restarting the binding stage drops them all).
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


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


class AuthorizedKeys:
    """The public keys in a folder, asked at each CURVE handshake.

    The folder's *.key files are read at every handshake and parsed again when
    their names or contents changed, so adding, deleting or overwriting a file
    (revoking a key, rotating one) counts from the next connection on. A folder's
    own mtime would miss an overwrite, and a file's mtime can miss one made within
    the same clock tick.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._digest: bytes | None = None
        self._keys: set[bytes] = set()
        self._refused = 0

    def _contents_digest(self) -> bytes:
        digest = hashlib.sha256()
        for path in sorted(self.folder.glob("*.key")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.digest()

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            digest = self._contents_digest()
            if digest != self._digest:
                self._keys, self._digest = set(zmq.auth.load_certificates(self.folder)), digest
                log.info("CURVE: %d authorized keys in %s", len(self._keys), self.folder)
        except (OSError, ValueError) as e:
            log.error("CURVE: cannot read the authorized keys in %s (%s): refusing every client", self.folder, e)
            self._digest = None
            return False
        if key not in self._keys:
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:  # a retrying client must not flood the log
                log.warning(
                    "CURVE: refused a client key not in %s (%d refusals so far; this one %s)",
                    self.folder,
                    self._refused,
                    key.decode(),
                )
            return False
        return True


class Curve:
    """The CURVE settings a stage process applies to its sockets; a ZAP authenticator while it binds any."""

    def __init__(self, ctx: zmq.Context, secret_key: str | os.PathLike, authorized_keys: str | os.PathLike):
        self.ctx = ctx
        self.public, self.secret = load_key_pair(secret_key)
        self.authorized = AuthorizedKeys(authorized_keys)
        self.authenticator: ThreadAuthenticator | None = None

    def server(self, socket: zmq.Socket) -> None:
        if self.authenticator is None:
            self.authenticator = ThreadAuthenticator(self.ctx, log=log)
            self.authenticator.start()
            self.authenticator.configure_curve_callback(domain="*", credentials_provider=self.authorized)
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def client(self, socket: zmq.Socket) -> None:
        set_client_keys(socket, self.public, self.secret, server_key=self.public)

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
