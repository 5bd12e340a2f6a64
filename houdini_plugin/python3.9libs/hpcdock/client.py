"""The one way plugin code, the CLI and the panel talk to ``hpcdock-service``.

Plain ``requests`` (Houdini 19.5+ ships it), Python 3.9. The event stream follower
reconnects by itself and resumes from the last event id it saw, so callers never see a
gap or a duplicate across a dropped connection or a service restart.
"""

import json
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import requests

from . import paths

JSON = Dict[str, Any]


class ServiceError(Exception):
    """The service answered with an error; ``field`` names the offending input when known."""

    def __init__(self, message: str, status: int = 0, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.status = status
        self.field = field


class ServiceUnavailable(ServiceError):
    """No service answered at the configured address."""


class Event(NamedTuple):
    id: int
    kind: str  # "job", "task" or "frame"
    data: JSON


def read_token() -> Optional[str]:
    try:
        return paths.token_path().read_text().strip() or None
    except OSError:
        return None


class Client:
    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 30.0) -> None:
        self.url = (url or paths.service_url()).rstrip("/")
        self._token = token
        self.timeout = timeout
        self._session = requests.Session()

    # -- plumbing -----------------------------------------------------------------------
    def _headers(self) -> Dict[str, str]:
        token = self._token or read_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            resp = self._session.request(method, self.url + path, headers=self._headers(), **kwargs)
        except requests.ConnectionError as exc:
            raise ServiceUnavailable(f"no hpcdock-service at {self.url} ({exc.__class__.__name__})") from exc
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> JSON:
        return self._request(method, path, **kwargs).json()

    # -- API ----------------------------------------------------------------------------
    def health(self) -> JSON:
        return self._json("GET", "/v1/health", timeout=5)

    def submit(self, bundle_dir: str, parameter_values: Optional[Dict[str, str]] = None,
               priority: Optional[int] = None, name: Optional[str] = None) -> JSON:
        body: JSON = {"bundle_dir": bundle_dir}
        if parameter_values:
            body["parameter_values"] = parameter_values
        if priority is not None:
            body["priority"] = priority
        if name:
            body["name"] = name
        return self._json("POST", "/v1/jobs", json=body)

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
        params = {"step": step} if step else None
        return self._request("GET", f"/v1/jobs/{job_id}/frames/{frame}/thumbnail", params=params).content

    def log(self, task_id: int, offset: int = 0) -> Tuple[str, int]:
        """Return the task log from byte ``offset`` and the offset to ask for next."""
        resp = self._request("GET", f"/v1/tasks/{task_id}/log", params={"offset": offset})
        # Past a cut in a capped log the next offset skips the dropped bytes: the service says where.
        return resp.text, int(resp.headers.get("X-Log-Next", offset + len(resp.content)))

    def cancel(self, job_id: int) -> JSON:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: int) -> JSON:
        return self._json("POST", f"/v1/jobs/{job_id}/retry")

    # -- event stream -------------------------------------------------------------------
    def events(self, job: Optional[int] = None, last_event_id: Optional[int] = None,
               reconnect: bool = True, max_backoff: float = 5.0) -> Iterator[Event]:
        """Yield events forever, reconnecting and resuming after the last one seen.

        With ``reconnect=False`` a dropped connection ends the iteration instead (the
        caller then resumes by passing the last id it saw).
        """
        backoff = 0.2
        while True:
            try:
                for event in self._stream(job, last_event_id):
                    last_event_id = event.id
                    backoff = 0.2
                    yield event
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    ServiceUnavailable):
                if not reconnect:
                    raise
            else:
                if not reconnect:
                    return
            time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    def _stream(self, job: Optional[int], last_event_id: Optional[int]) -> Iterator[Event]:
        headers = self._headers()
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        params = {"job": job} if job is not None else None
        try:
            resp = self._session.get(self.url + "/v1/events", headers=headers, params=params,
                                     stream=True, timeout=(5, 30))
        except requests.ConnectionError as exc:
            raise ServiceUnavailable(f"no hpcdock-service at {self.url}") from exc
        with resp:
            if resp.status_code >= 400:
                raise _error_from(resp)
            yield from parse_sse(resp.iter_lines(decode_unicode=True))


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


def _error_from(resp: requests.Response) -> ServiceError:
    try:
        err = resp.json().get("error") or {}
        return ServiceError(str(err.get("message") or resp.text), resp.status_code, str(err.get("field") or ""))
    except ValueError:
        return ServiceError(f"HTTP {resp.status_code}: {resp.text[:200]}", resp.status_code)
