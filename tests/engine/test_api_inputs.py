"""The HTTP API against hostile input: a schemathesis fuzz run over the served OpenAPI document
with zero server errors, and the inputs that used to answer 500 answered with a 4xx naming the
field. A real Service on a real engine, served in-process (ASGI)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.helpers import make_bundle, remove_leftovers, wait_for

pytestmark = pytest.mark.engine


class Api:
    def __init__(self, root: Path, engine_url: str) -> None:
        from hpcdock_service.api import create_app
        from hpcdock_service.config import ServiceConfig, SubmitLimits
        from hpcdock_service.engines.local import LocalEngine
        from hpcdock_service.service import Service

        self.root = root
        self.state_dir, self.engine_url = root / "state", engine_url  # what remove_leftovers reads
        self.config_home = root / "config"  # none written: the defaults, as the config below
        config = ServiceConfig(
            state_dir=str(self.state_dir),
            token_file=str(root / "token"),
            slots=1,
            allowed_roots=[str(root)],
            limits=SubmitLimits(max_concurrent_submits=1),
        )
        self.service = Service(config, engine=LocalEngine(engine_url))
        self.app = create_app(self.service)
        # a loopback Host, as the real client sends: the API may refuse other names
        self.auth = {"Authorization": f"Bearer {self.service.token}", "Host": "localhost"}
        self.http = TestClient(self.app, base_url="http://localhost", raise_server_exceptions=False)

    def error(self, method: str, url: str, status: int, **kw: Any) -> dict[str, str]:
        resp = self.http.request(method, url, headers={**self.auth, **kw.pop("headers", {})}, **kw)
        assert resp.status_code == status, (url, resp.status_code, resp.text)
        return resp.json()["error"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, engine_url: str) -> Iterator[Api]:
    api = Api(tmp_path_factory.mktemp("api"), engine_url)
    api.service.start()
    # one real job, so fuzzed ids 1, 2, 3 reach real jobs, tasks and frames
    job = api.http.post(
        "/v1/jobs",
        headers=api.auth,
        json={"bundle_dir": str(make_bundle(api.root / "seed", frames="1-3", chunk=1))},
    )
    assert job.status_code == 201, job.text
    wait_for(
        lambda: (
            api.http.get(f"/v1/jobs/{job.json()['id']}", headers=api.auth).json()["state"]
            in ("succeeded", "failed")
        ),
        120,
        what="the seed job to finish",
    )
    yield api
    api.service.close()
    remove_leftovers(api)  # fuzzed retries of the seed job may have left containers running


def test_fuzzed_requests_never_get_a_server_error(api: Api) -> None:
    """Every operation of the served document, a bounded number of generated requests each.

    Driven through Hypothesis directly: schemathesis's pytest plugin does not run on pytest 9.2.
    """
    # the event stream never ends by itself; its inputs are checked below
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app, headers=api.auth).exclude(
        path="/v1/events"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            case.call_and_validate(headers=api.auth, checks=[not_a_server_error])

        no_server_error()


BIG = str(2**63)


@pytest.mark.parametrize(
    "url,field",
    [
        (f"/v1/jobs/{BIG}", "job_id"),
        (f"/v1/jobs/{BIG}/tasks", "job_id"),
        (f"/v1/jobs/{BIG}/frames", "job_id"),
        (f"/v1/jobs/1/frames/{BIG}/thumbnail", "frame"),
        (f"/v1/tasks/{BIG}", "task_id"),
        (f"/v1/tasks/1/log?offset={BIG}", "offset"),
        (f"/v1/events?since={BIG}", "since"),
        (f"/v1/events?job={BIG}", "job"),
        ("/v1/events?since=-1", "since"),
    ],
)
def test_out_of_range_ids_are_refused_by_name(api: Api, url: str, field: str) -> None:
    assert api.error("GET", url, 422)["field"] == field


@pytest.mark.parametrize("path", [f"/v1/jobs/{BIG}/cancel", f"/v1/jobs/{BIG}/retry"])
def test_out_of_range_ids_in_actions_are_refused(api: Api, path: str) -> None:
    assert api.error("POST", path, 422)["field"] == "job_id"


def test_out_of_range_last_event_id_is_refused(api: Api) -> None:
    error = api.error("GET", "/v1/events", 400, headers={"Last-Event-ID": BIG})
    assert error["field"] == "Last-Event-ID"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"bundle_dir": "/tmp/a\u0000b"}, "bundle_dir"),
        ({"bundle_dir": "/tmp/\udc80"}, "bundle_dir"),
        ({"bundle_dir": "/tmp", "priority": True}, "priority"),
        ({"bundle_dir": "/tmp", "priority": 1.5}, "priority"),
        ({"bundle_dir": "/tmp", "name": "x\u0000"}, "name"),
        ({"bundle_dir": "/tmp", "parameter_values": {"Frames": {"deep": [1]}}}, "parameter_values.Frames"),
        ({"bundle_dir": "/tmp", "parameter_values": {"Frames": "1\u0000"}}, "parameter_values.Frames"),
        ({"bundle_dir": "/tmp", "parameter_values": {"Frames": 2**64}}, "parameter_values.Frames"),
    ],
)
def test_bad_submit_bodies_are_refused_by_name(api: Api, body: dict[str, Any], field: str) -> None:
    import json

    # json.dumps keeps a lone surrogate as \\udc80, as a hostile client would send it
    error = api.error(
        "POST", "/v1/jobs", 422, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert error["field"] == field, error


def test_bad_bundle_settings_are_refused_at_submit(api: Api) -> None:
    assets = api.root / "assets"  # a mountable source (api.root itself holds the service's state)
    assets.mkdir(exist_ok=True)
    cases = [
        ({"frames": {"parameter": "Frame", "output": "out/{frame.real.bogus}.txt"}}, "frames.output"),
        ({"image": "localhost/hpcdock-test:latest;x"}, "image"),
        ({"env": {"A\u0000": "1"}}, "env"),
        ({"env": {"A": "x\u0000"}}, "env.A"),
        ({"mounts": [{"source": str(assets), "target": "/proc"}]}, "mounts[0].target"),
    ]
    for i, (settings_, field) in enumerate(cases):
        bundle = make_bundle(api.root / f"bad{i}", settings=settings_)
        error = api.error("POST", "/v1/jobs", 400, json={"bundle_dir": str(bundle)})
        assert field in error["field"], error
    bundle = make_bundle(api.root / "bigframe")
    error = api.error(
        "POST",
        "/v1/jobs",
        400,
        json={"bundle_dir": str(bundle), "parameter_values": {"Frames": "9223372036854775808"}},
    )
    assert "Frame" in error["field"] and "out of range" in error["message"]


def test_the_openapi_document_declares_the_error_body(api: Api) -> None:
    doc = api.http.get("/openapi.json", headers=api.auth).json()
    assert set(doc["components"]["schemas"]["ErrorDetail"]["required"]) == {"field", "message"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            declared = {status for status in op["responses"] if status.startswith("4")}
            assert {"400", "401", "422"} <= declared, (method, path, declared)
            if "{" in path:
                assert "404" in declared, (method, path)
            for status in declared:
                assert op["responses"][status]["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                }, (method, path, status)
    assert "429" in doc["paths"]["/v1/jobs"]["post"]["responses"]


def test_submissions_beyond_the_bound_get_429(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    real_submit = api.service.submit

    def slow_submit(*args: Any, **kw: Any):
        entered.set()
        release.wait(30)
        return real_submit(*args, **kw)

    monkeypatch.setattr(api.service, "submit", slow_submit)
    first: list[int] = []
    worker = threading.Thread(
        target=lambda: first.append(
            api.http.post("/v1/jobs", headers=api.auth, json={"bundle_dir": "/nonexistent"}).status_code
        )
    )
    worker.start()
    try:
        assert entered.wait(10), "the first submission never started"
        error = api.error("POST", "/v1/jobs", 429, json={"bundle_dir": "/nonexistent"})
        assert error["field"] == "bundle_dir" and "max_concurrent_submits" in error["message"]
    finally:
        release.set()
        worker.join(30)
    assert first == [400]  # the held one went on to be answered (here: no such directory)
    monkeypatch.undo()
    assert api.error("POST", "/v1/jobs", 400, json={"bundle_dir": "/nonexistent"})["field"] == "bundle_dir"
