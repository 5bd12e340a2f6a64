"""The event stream and the plugin's client over a real HTTP server (uvicorn on a Unix socket, in
this process) on a Service over a fake engine: every event's ``data`` is the declared
EventData, the client and the command line read the fields the service sends, and a follower
that resumes from the last id it saw gets the rest and nothing twice.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import uvicorn
from hpcdock import cli
from hpcdock.client import Client, Event
from hpcdock.protocol import EventKind, event_object
from hpcdock_service.api import create_app
from hpcdock_service.api.schemas import EventData, JobOut
from hpcdock_service.service import Service

from tests.fake_engine import fake_service
from tests.helpers import make_bundle


class Served:
    def __init__(self, service: Service, socket_path: Path) -> None:
        self.service = service
        self.app = create_app(service)
        self.server = uvicorn.Server(uvicorn.Config(self.app, uds=str(socket_path), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.client = Client(f"unix://{socket_path}", token=service.token, timeout=10)

    def stop(self) -> None:
        self.app.state.api.close_streams()
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the server did not stop"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    service = fake_service(tmp_path)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    try:
        served = Served(service, run / "api.sock")
        try:
            yield served
        finally:
            served.stop()
    finally:
        service.close()


def take(events: Iterator[Event], n: int) -> list[Event]:
    """The next ``n`` events; the stream itself never ends."""
    return [next(events) for _ in range(n)]


def test_events_are_the_declared_objects_and_resume_without_gaps(served: Served, tmp_path: Path) -> None:
    client = served.client
    job = client.submit(str(make_bundle(tmp_path / "shot", frames="1-4", chunk=2)))
    JobOut.model_validate(job)
    client.cancel(job["id"])  # two task events (pending -> canceled), then the job's

    stream = client.events(last_event_id=0, reconnect=False)
    first = take(stream, 2)
    stream.close()
    rest = take(client.events(last_event_id=first[-1].id, reconnect=False), 2)
    events = first + rest
    assert [e.id for e in events] == sorted({e.id for e in events}) == [1, 2, 3, 4]
    assert [e.kind for e in events] == [EventKind.JOB, EventKind.TASK, EventKind.TASK, EventKind.JOB]
    for event in events:
        EventData.model_validate(event.data)  # exactly the declared object for its kind
        assert set(event.data) == {event.kind}
    assert event_object(events[0].kind, events[0].data)["state"] == "queued"
    assert event_object(events[-1].kind, events[-1].data) == client.job(job["id"])
    assert {event_object(e.kind, e.data)["state"] for e in events[1:3]} == {"canceled"}


def test_the_command_line_reads_what_the_service_sends(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = served.client
    job = client.submit(str(make_bundle(tmp_path / "shot", frames="1-4", chunk=2)), name="shot010")
    monkeypatch.setattr(cli, "Client", lambda *a, **kw: client)

    def run(*argv: str) -> str:
        out = io.StringIO()
        with redirect_stdout(out):
            assert cli.main(list(argv)) == 0
        return out.getvalue()

    assert "shot010" in run("jobs") and "queued" in run("jobs")
    tasks = run("tasks", str(job["id"]))
    assert "1-2" in tasks and "3-4" in tasks and "pending" in tasks
    frames = run("frames", str(job["id"]))
    assert "f.0004.txt" in frames and "waiting" in frames
