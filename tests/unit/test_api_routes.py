"""The API's routes on a Service over a fake engine (nothing is dispatched): each answer is the
declared model of docs/openapi.json, field for field, and refusals name the field.

Through httpx (Starlette's TestClient), in process. That tasks really run is tests/engine's part.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hpcdock_service.api import create_app
from hpcdock_service.api.schemas import FrameList, Health, JobList, JobOut, TaskList, TaskOut
from hpcdock_service.service import Service
from pydantic import BaseModel

from tests.fake_engine import fake_service
from tests.helpers import make_bundle


class Api:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.http = TestClient(
            create_app(service), base_url="http://localhost", raise_server_exceptions=False
        )
        self.auth = {"Authorization": f"Bearer {service.token}"}

    def get(self, url: str, model: type[BaseModel], **kw: Any) -> Any:
        """The answer's JSON, after checking it is exactly the declared model (no field more or less)."""
        return self._checked(self.http.get(url, headers=self.auth, **kw), 200, model)

    def post(self, url: str, model: type[BaseModel], status: int = 200, **kw: Any) -> Any:
        return self._checked(self.http.post(url, headers=self.auth, **kw), status, model)

    def error(self, method: str, url: str, status: int, **kw: Any) -> dict[str, str]:
        resp = self.http.request(method, url, headers={**self.auth, **kw.pop("headers", {})}, **kw)
        assert resp.status_code == status, (url, resp.status_code, resp.text)
        assert set(resp.json()) == {"error"}, resp.text
        return resp.json()["error"]

    @staticmethod
    def _checked(resp: Any, status: int, model: type[BaseModel]) -> Any:
        assert resp.status_code == status, resp.text
        body = resp.json()
        model.model_validate(body)  # extra fields are refused by the answer models
        return body


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    service = fake_service(tmp_path)
    try:
        yield Api(service)
    finally:
        service.close()


def submit(api: Api, root: Path, frames: str = "1-6", chunk: int = 3) -> dict[str, Any]:
    body = {"bundle_dir": str(make_bundle(root, frames=frames, chunk=chunk)), "priority": 60}
    return api.post("/v1/jobs", JobOut, 201, json=body)


def test_a_submitted_job_reads_back_the_same_everywhere(api: Api, tmp_path: Path) -> None:
    job = submit(api, tmp_path / "shot")
    assert (job["state"], job["priority"], job["tasks_total"], job["frames_total"]) == ("queued", 60, 2, 6)
    assert [s["name"] for s in job["steps"]] == ["render"]
    assert api.get(f"/v1/jobs/{job['id']}", JobOut) == job
    assert api.get("/v1/jobs", JobList) == {"jobs": [job]}
    assert api.get("/v1/jobs", JobList, params={"state": "running"}) == {"jobs": []}

    tasks = api.get(f"/v1/jobs/{job['id']}/tasks", TaskList)["tasks"]
    assert [(t["index"], t["frames"], t["params"], t["state"]) for t in tasks] == [
        (0, [1, 2, 3], {"Frame": "1-3"}, "pending"),
        (1, [4, 5, 6], {"Frame": "4-6"}, "pending"),
    ]
    assert api.get(f"/v1/tasks/{tasks[1]['id']}", TaskOut) == tasks[1]

    frames = api.get(f"/v1/jobs/{job['id']}/frames", FrameList)["frames"]
    assert [(f["frame"], f["task_id"], f["state"], f["thumbnail_url"]) for f in frames] == [
        (n, tasks[(n - 1) // 3]["id"], "waiting", None) for n in range(1, 7)
    ]
    assert frames[0]["output"] == str(tmp_path / "shot" / "out" / "f.0001.txt")


def test_a_listing_of_many_rows_streams_whole(api: Api, tmp_path: Path) -> None:
    # more rows than one streamed batch (LIST_BATCH), so the batches' joins are parsed too
    job = submit(api, tmp_path / "long", frames="1-2500", chunk=1)
    frames = api.get(f"/v1/jobs/{job['id']}/frames", FrameList)["frames"]
    assert [f["frame"] for f in frames] == list(range(1, 2501))
    assert len(api.get(f"/v1/jobs/{job['id']}/tasks", TaskList)["tasks"]) == 2500


def test_cancel_and_retry_through_the_facade(api: Api, tmp_path: Path) -> None:
    job = submit(api, tmp_path / "shot")
    error = api.error("POST", f"/v1/jobs/{job['id']}/retry", 409)
    assert error["field"] == "job" and "queued" in error["message"]
    canceled = api.post(f"/v1/jobs/{job['id']}/cancel", JobOut)
    assert canceled["state"] == "canceled" and canceled["error"] == "canceled by user"
    tasks = api.get(f"/v1/jobs/{job['id']}/tasks", TaskList)["tasks"]
    assert {t["state"] for t in tasks} == {"canceled"}

    again = api.post(f"/v1/jobs/{job['id']}/retry", JobOut, json={"frames": [5]})
    assert again["state"] == "queued"
    tasks = api.get(f"/v1/jobs/{job['id']}/tasks", TaskList)["tasks"]
    # the canceled task owning frame 5 is replaced by one new task for its unfinished frames
    assert [(t["frames"], t["state"]) for t in tasks] == [
        ([1, 2, 3], "canceled"),
        ([4, 5, 6], "replaced"),
        ([4, 5, 6], "pending"),
    ]
    api.post(f"/v1/jobs/{job['id']}/cancel", JobOut)
    assert api.post(f"/v1/jobs/{job['id']}/retry", JobOut)["state"] == "queued"
    assert {t["state"] for t in api.get(f"/v1/jobs/{job['id']}/tasks", TaskList)["tasks"]} == {
        "pending",
        "replaced",
    }


def test_missing_things_answer_404_naming_what(api: Api, tmp_path: Path) -> None:
    job = submit(api, tmp_path / "shot")
    for url, field in (
        ("/v1/jobs/999", "job"),
        ("/v1/jobs/999/tasks", "job"),
        ("/v1/jobs/999/frames", "job"),
        ("/v1/tasks/999", "task"),
        ("/v1/tasks/999/log", "task"),
        (f"/v1/jobs/{job['id']}/frames/99/thumbnail", "frame"),
        (f"/v1/jobs/{job['id']}/frames/1/thumbnail", "frame"),  # waiting: no thumbnail yet
    ):
        assert api.error("GET", url, 404)["field"] == field, url
    assert api.error("POST", "/v1/jobs/999/cancel", 404)["field"] == "job"


def test_refused_requests_name_the_field(api: Api, tmp_path: Path) -> None:
    assert api.error("GET", "/v1/jobs", 401, headers={"Authorization": "Bearer nope"})["field"] == (
        "Authorization"
    )
    assert api.error("GET", "/v1/jobs/-1", 422)["field"] == "job_id"
    assert api.error("GET", "/v1/tasks/1/log", 422, params={"offset": -1})["field"] == "offset"
    assert api.error("POST", "/v1/jobs", 422, json={"bundle_dir": 7})["field"] == "bundle_dir"
    error = api.error("POST", "/v1/jobs", 400, json={"bundle_dir": str(tmp_path / "none")})
    assert error["field"] == "bundle_dir"
    job = submit(api, tmp_path / "shot")
    assert api.error("POST", f"/v1/jobs/{job['id']}/retry", 400, json={"step": "render"})["field"] == "step"
    assert api.error("GET", "/v1/events", 400, headers={"Last-Event-ID": "x"})["field"] == "Last-Event-ID"


def test_task_log_health_and_liveness(api: Api, tmp_path: Path) -> None:
    job = submit(api, tmp_path / "shot")
    task = api.get(f"/v1/jobs/{job['id']}/tasks", TaskList)["tasks"][0]
    log = api.http.get(f"/v1/tasks/{task['id']}/log", headers=api.auth, params={"offset": 5})
    assert (log.status_code, log.content, log.headers["x-log-size"], log.headers["x-log-next"]) == (
        200,
        b"",
        "0",
        "5",
    )
    health = api.get("/v1/health", Health)
    assert health["engine"]["engine"] == "fake" and health["store"] == {"state": "ok"}
    assert health["last_event_id"] == api.service.store.last_event_id() > 0
    assert api.http.get("/v1/live").json() == {"ok": True}  # no token needed
    metrics = api.http.get("/metrics", headers=api.auth).text
    assert 'hpcdock_tasks{state="pending"} 2' in metrics
