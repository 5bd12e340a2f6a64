"""The one way plugin code, the CLI and the panel talk to ``hpcdock-service``.

Standard library only (``http.client``), Python 3.9: Houdini's Python has no ``requests``
to count on. One connection per request, closed after it: no stale keep-alive connection to
recover from, and every connection is checked before the token goes out on it: on the Unix
socket by who owns its directory and by the peer's credentials, over TCP by a challenge
only the holder of the token can answer (see :mod:`hpcdock.endpoint`). The event stream
follower reconnects by itself and resumes from the last event id it saw, so callers never
see a gap or a duplicate across a dropped connection or a service restart.
"""

import http.client
import json
import os
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple
from urllib.parse import urlencode

from . import endpoint, paths
from .protocol import RECONNECT_MAX_S, Backoff

JSON = Dict[str, Any]
CONNECT_TIMEOUT = 5.0


class ServiceError(Exception):
    """The service answered with an error; ``field`` names the offending input when known."""

    def __init__(self, message: str, status: int = 0, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.status = status
        self.field = field


class ServiceUnavailable(ServiceError):
    """No service answered at the configured address."""


class NotYourService(ServiceError):
    """Something answers at the address but is not this user's service: the token is not sent."""


class Event(NamedTuple):
    id: int
    kind: str  # an EventKind's value (a newer service may send kinds this client does not know)
    data: JSON


class Response(NamedTuple):
    status: int
    headers: Dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_token() -> Optional[str]:
    try:
        return paths.token_path().read_text().strip() or None
    except OSError:
        return None


class Client:
    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 30.0) -> None:
        raw = url or paths.service_url()
        try:
            self.endpoint = endpoint.parse(raw)
        except ValueError as exc:
            raise ServiceError(str(exc), field="HPCDOCK_URL" if url is None else "url") from None
        self.url = self.endpoint.url
        self._token = token
        self.timeout = timeout

    # -- plumbing -----------------------------------------------------------------------
    def _token_now(self) -> Optional[str]:
        return self._token or read_token()

    def _token_origin(self) -> str:
        return "the token given to this client" if self._token else f"the token in {paths.token_path()}"

    def open(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Dict[str, Any]] = None,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        auth: bool = True,
        timeout: Optional[float] = None,
    ) -> http.client.HTTPResponse:
        """Send one request on a fresh, checked connection; the response comes back unread.

        Streams read it as it arrives; tests and tools send hand-made requests through it.
        The caller closes the response, which closes the connection.
        """
        token = self._token_now()
        conn = _connect(self.endpoint, token, self._token_origin(), timeout or self.timeout)
        hdrs = {"Connection": "close", **(headers or {})}
        if auth and token:
            hdrs["Authorization"] = f"Bearer {token}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            path += "?" + urlencode(query)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ServiceUnavailable(f"no hpcdock-service at {self.url} ({_describe(exc)})") from exc

    def send(self, method: str, path: str, **kwargs: Any) -> Response:
        """:meth:`open` and read the whole answer, whatever its status."""
        resp = self.open(method, path, **kwargs)
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceUnavailable(
                f"hpcdock-service at {self.url} dropped the connection ({_describe(exc)})"
            ) from exc
        finally:
            resp.close()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)

    def _request(self, method: str, path: str, json_body: Optional[JSON] = None, **kwargs: Any) -> Response:
        if json_body is not None:
            kwargs["body"] = json.dumps(json_body).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        resp = self.send(method, path, **kwargs)
        if resp.status >= 400:
            raise self._error_from(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _error_from(self, resp: Response) -> ServiceError:
        try:
            err = resp.json().get("error") or {}
            error = ServiceError(
                str(err.get("message") or resp.body.decode(errors="replace")),
                resp.status,
                str(err.get("field") or ""),
            )
        except (ValueError, AttributeError):
            error = ServiceError(
                f"HTTP {resp.status}: {resp.body[:200].decode(errors='replace')}", resp.status
            )
        if resp.status == 401:
            error = ServiceError(
                f"{error.message} (this client sent {self._token_origin()})", 401, error.field
            )
        return error

    # -- API ----------------------------------------------------------------------------
    def health(self) -> JSON:
        return self._json("GET", "/v1/health", timeout=5)

    def submit(
        self,
        bundle_dir: str,
        parameter_values: Optional[Dict[str, str]] = None,
        priority: Optional[int] = None,
        name: Optional[str] = None,
    ) -> JSON:
        body: JSON = {"bundle_dir": bundle_dir}
        if parameter_values:
            body["parameter_values"] = parameter_values
        if priority is not None:
            body["priority"] = priority
        if name:
            body["name"] = name
        return self._json("POST", "/v1/jobs", json_body=body)

    def jobs(self) -> List[JSON]:
        return self._json("GET", "/v1/jobs")["jobs"]

    def job(self, job_id: int) -> JSON:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def tasks(self, job_id: int) -> List[JSON]:
        return self._json("GET", f"/v1/jobs/{job_id}/tasks")["tasks"]

    def task(self, task_id: int) -> JSON:
        return self._json("GET", f"/v1/tasks/{task_id}")

    def frames(self, job_id: int) -> List[JSON]:
        return self._json("GET", f"/v1/jobs/{job_id}/frames")["frames"]

    def thumbnail(self, job_id: int, frame: int, step: Optional[str] = None) -> bytes:
        return self._request("GET", f"/v1/jobs/{job_id}/frames/{frame}/thumbnail", params={"step": step}).body

    def log(self, task_id: int, offset: int = 0) -> Tuple[str, int]:
        """Return the task log from byte ``offset`` and the offset to ask for next."""
        resp = self._request("GET", f"/v1/tasks/{task_id}/log", params={"offset": offset})
        # Past a cut in a capped log the next offset skips the dropped bytes: the service says where.
        text = resp.body.decode("utf-8", errors="replace")
        return text, int(resp.headers.get("x-log-next", offset + len(resp.body)))

    def cancel(self, job_id: int) -> JSON:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(
        self,
        job_id: int,
        frames: Optional[Iterable[int]] = None,
        flagged: bool = False,
        step: Optional[str] = None,
    ) -> JSON:
        """Retry the job's failed tasks; or, with ``frames`` or ``flagged``, render just those frames again."""
        if frames is None and not flagged:
            return self._json("POST", f"/v1/jobs/{job_id}/retry")
        body: JSON = {"frames": sorted(set(frames))} if frames is not None else {"flagged": True}
        if step is not None:
            body["step"] = step
        return self._json("POST", f"/v1/jobs/{job_id}/retry", json_body=body)

    # -- event stream -------------------------------------------------------------------
    def events(
        self,
        job: Optional[int] = None,
        last_event_id: Optional[int] = None,
        reconnect: bool = True,
        max_backoff: float = RECONNECT_MAX_S,
    ) -> Iterator[Event]:
        """Yield events forever, reconnecting and resuming after the last one seen.

        With ``reconnect=False`` a dropped connection ends the iteration instead (the
        caller then resumes by passing the last id it saw).
        """
        backoff = Backoff(maximum=max_backoff)
        while True:
            try:
                for event in self._stream(job, last_event_id):
                    last_event_id = event.id
                    backoff.reset()
                    yield event
            except (OSError, http.client.HTTPException, ServiceUnavailable):
                if not reconnect:
                    raise
            else:
                if not reconnect:
                    return
            time.sleep(backoff.next())

    def _stream(self, job: Optional[int], last_event_id: Optional[int]) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        # the service sends a keepalive every 10 s: 30 s of silence is a dead connection
        resp = self.open("GET", "/v1/events", params={"job": job}, headers=headers, timeout=30)
        try:
            if resp.status >= 400:
                raise self._error_from(Response(resp.status, {}, resp.read()))
            yield from parse_sse(line.decode("utf-8").rstrip("\r\n") for line in resp)
        finally:
            resp.close()


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Turn Server-Sent Events lines into events; comments (keepalives) are skipped."""
    event_id: Optional[int] = None
    kind = "message"
    data: List[str] = []
    for line in lines:
        if line is None:
            continue
        if line == "":
            if data and event_id is not None:
                yield Event(event_id, kind, json.loads("\n".join(data)))
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = int(value)
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


# -- connections ----------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def _connect(
    ep: endpoint.Endpoint, token: Optional[str], token_origin: str, timeout: float
) -> http.client.HTTPConnection:
    conn: http.client.HTTPConnection
    if ep.is_unix:
        conn = _UnixConnection(ep, timeout)
    else:
        conn = _TcpConnection(ep, timeout, token, token_origin)
    try:
        conn.connect()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise ServiceUnavailable(f"no hpcdock-service at {ep.url} ({_describe(exc)})") from exc
    except NotYourService:
        conn.close()
        raise
    return conn


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the user's Unix socket, refused unless this user's own process listens on it."""

    def __init__(self, ep: endpoint.Endpoint, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.connect_timeout = min(timeout, CONNECT_TIMEOUT)
        self.socket_path = str(ep.path)
        self.url = ep.url

    def connect(self) -> None:
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:  # no service has run yet (or it was stopped)
            raise ConnectionRefusedError(f"{self.socket_path} does not exist") from None
        except OSError as exc:
            raise NotYourService(f"refusing to talk to {self.url}: {exc.strerror}") from None
        problem = endpoint.private_dir_problem(Path(self.socket_path).parent)
        if problem is None and st.st_uid != os.geteuid():
            problem = f"{self.socket_path} belongs to uid {st.st_uid}"
        if problem is not None:
            raise NotYourService(f"refusing to talk to {self.url}: {problem}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.socket_path)
            uid = _peer_uid(sock)
            if uid is not None and uid != os.geteuid():
                raise NotYourService(
                    f"refusing to talk to {self.url}: the process listening there runs as "
                    f"uid {uid}, not as this user (uid {os.geteuid()})"
                )
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _peer_uid(sock: socket.socket) -> Optional[int]:
    """The user id of the process at the other end (Linux); None where the system does not say."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None  # the private directory is then the whole check
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class _TcpConnection(http.client.HTTPConnection):
    """HTTP over TCP, refused unless what answers proves it knows the token before it is sent."""

    def __init__(
        self, ep: endpoint.Endpoint, timeout: float, token: Optional[str], token_origin: str
    ) -> None:
        super().__init__(ep.host, ep.port, timeout=timeout)
        self.connect_timeout = min(timeout, CONNECT_TIMEOUT)
        self.url = ep.url
        self.token = token
        self.token_origin = token_origin

    def connect(self) -> None:
        if not self.token:
            raise NotYourService(
                f"cannot check that {self.url} is your hpcdock-service: no token "
                f"({self.token_origin} is missing; the service writes it on its first start)"
            )
        super().connect()
        assert self.sock is not None
        self.sock.settimeout(self.connect_timeout)
        nonce = secrets.token_hex(16)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.sock.sendall(
            f"GET /v1/hello?nonce={nonce} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
            "Accept: application/json\r\n\r\n".encode()
        )
        resp = http.client.HTTPResponse(self.sock, method="GET")
        try:
            resp.begin()
            answer = resp.read(4096)
        finally:
            resp.close()
        try:
            claimed = json.loads(answer)["proof"] if resp.status == 200 else None
        except (ValueError, KeyError, TypeError):
            claimed = None
        expected = endpoint.proof(self.token, nonce, endpoint.address_of(self.sock.getpeername()))
        if not isinstance(claimed, str) or not secrets.compare_digest(claimed, expected):
            raise NotYourService(
                f"refusing to send the token to {self.url}: what answers there could not prove it knows "
                f"{self.token_origin} (HTTP {resp.status}). Another user's service, or another program, may "
                "hold that port; your own service listens on a private Unix socket by default "
                "(hpcdock url prints the address this client uses)"
            )
        self.sock.settimeout(self.timeout)
