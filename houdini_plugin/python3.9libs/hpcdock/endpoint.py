"""Where a user's ``hpcdock-service`` listens, shared by the service and every client.

By default each user's service listens on a Unix socket in a private directory of that user
(``$XDG_RUNTIME_DIR/hpcdock/service.sock``, as rootless Podman does), so two users on one
machine never compete for an address and nobody else can reach the socket. TCP is opt-in;
over TCP anyone on the machine may have taken the port, so a client first asks whatever
answers to prove it knows the user's token (:func:`proof`) before it sends the token.
"""

import hashlib
import hmac
import os
import socket
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional, Tuple
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7654
SOCKET_NAME = "service.sock"
# Host header values the service answers to: a page served from any other name (DNS
# rebinding) cannot read the API even when its browser reaches the port.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Endpoint(NamedTuple):
    """A Unix socket (``path``) or a TCP address (``host``, ``port``)."""

    path: Optional[str] = None
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def url(self) -> str:
        if self.path is not None:
            return "unix://" + self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse(text: str) -> Endpoint:
    """``unix:///abs/path``, ``http://host:port`` or ``tcp://host:port``; ValueError naming the forms."""
    text = text.strip()
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: a Unix socket address is unix:///absolute/path")
        return Endpoint(path=path)
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "tcp")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ValueError(f"{text!r}: expected unix:///path/to/service.sock or http://host:port")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535") from None
    return Endpoint(host=parts.hostname, port=port)


def runtime_dir() -> Path:
    """The private directory of the service's socket.

    ``$XDG_RUNTIME_DIR/hpcdock``; without that variable (a shell from ``su``, cron) the same
    fallbacks as Podman: ``/run/user/UID`` when it is the user's own, else a directory in
    the temporary directory named after the user id.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "hpcdock"
    uid = os.geteuid()
    run = Path(f"/run/user/{uid}")
    try:
        if run.is_dir() and run.stat().st_uid == uid:
            return run / "hpcdock"
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"hpcdock-run-{uid}"


def default() -> Endpoint:
    """The user's private socket; TCP on loopback where Python has no Unix sockets (Windows)."""
    if hasattr(socket, "AF_UNIX"):
        return Endpoint(path=str(runtime_dir() / SOCKET_NAME))
    return Endpoint(host=DEFAULT_HOST, port=DEFAULT_PORT)


def private_dir_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a directory only this user controls (None when it is).

    A directory another user can write to would let them replace the socket with their own.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not os.path.isdir(path) or os.path.islink(path):
        return f"{path} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"{path} is writable by other users (mode {st.st_mode & 0o777:o})"
    return None


def proof(token: str, nonce: str, address: str) -> str:
    """What the service answers to a TCP client's challenge: only a holder of the token can
    compute it, and it is bound to the address the client's connection reached, so a squatter
    relaying the challenge to the real service elsewhere gets a proof that does not match."""
    message = f"hpcdock-endpoint-proof\n{nonce}\n{address}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def address_of(sockname: Tuple[str, Optional[int]]) -> str:
    """``host port`` of a TCP socket address, the same string on both ends of a connection."""
    return f"{sockname[0]} {sockname[1]}"
