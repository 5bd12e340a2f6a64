"""Frame results and the resumable event stream, against a real rootless engine and a real service.

Issue 3's promises: every frame of a real job ends done with a thumbnail; progress of a
running task is visible; the event stream resumes from ``Last-Event-ID`` with no gap and
no duplicate, across a dropped connection and across service restarts; a missing output
fails its frame naming the path; ``hpcdock follow`` follows the stream.

The services here send a heartbeat every second (``HPCDOCK_KEEPALIVE``), which
:func:`drain` uses to know it has read the whole log: the stream sends a heartbeat only
once it has nothing left to send.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from hpcdock.protocol import JOB_FINAL

from tests.helpers import ServiceProcess, make_bundle, remove_leftovers, wait_for, wait_job

pytestmark = pytest.mark.engine

FRAME_ORDER = {"waiting": 0, "running": 1, "done": 2, "failed": 2}


@pytest.fixture
def service(tmp_path: Path, engine_url: str) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path / "svc", engine_url, extra_env={"HPCDOCK_KEEPALIVE": "1"}).start()
    yield svc
    svc.stop()
    remove_leftovers(svc)


# -- reading the stream raw -------------------------------------------------------------------


def raw_blocks(
    svc: ServiceProcess, *, params: Optional[dict] = None, headers: Optional[dict] = None, timeout: float = 30
) -> Iterator[list[str]]:
    """Yield the stream's blocks (the lines between blank lines), comments included."""
    resp = svc.client().open("GET", "/v1/events", params=params, headers=headers, timeout=timeout)
    with resp:
        assert resp.status == 200, resp.read()
        assert resp.getheader("content-type").startswith("text/event-stream")
        block: list[str] = []
        for raw in resp:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if block:
                    yield block
                block = []
            else:
                block.append(line)


def block_event(block: list[str]) -> Optional[tuple[int, str, dict]]:
    """(id, kind, data) of an event block; None for a comment block."""
    import json

    fields: dict[str, list[str]] = {}
    for line in block:
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
    if not fields:
        return None
    assert "id" in fields, f"event without id: {block}"
    return int(fields["id"][-1]), fields["event"][-1], json.loads("\n".join(fields["data"]))


def drain(svc: ServiceProcess, job: Optional[int] = None, since: int = 0) -> list[tuple[int, str, dict]]:
    """Every event after ``since`` in the log now: read until the first heartbeat."""
    events = []
    params: dict[str, Any] = {"since": since}
    if job is not None:
        params["job"] = job
    for block in raw_blocks(svc, params=params):
        if block == [": keepalive"]:
            return events
        event = block_event(block)
        if event is not None:
            events.append(event)
    raise AssertionError("the stream ended without a heartbeat")


def job_ended(event) -> bool:
    return event.kind == "job" and event.data["job"]["state"] in JOB_FINAL


def assert_frames_never_go_back(events: list[tuple[int, str, dict]]) -> None:
    """Within one attempt a frame moves waiting -> running -> done/failed, never backwards."""
    seen: dict[tuple[int, str, int], tuple[int, str, int]] = {}
    for eid, kind, data in events:
        if kind != "frame":
            continue
        f = data["frame"]
        key = (f["job_id"], f["step"], f["frame"])
        prev = seen.get(key)
        if prev and prev[1] == "done":
            assert f["state"] == "done", (
                f"event {eid}: frame {f['frame']} went from done (event {prev[0]}) to {f['state']}"
            )
        if prev and prev[2] == f["attempt"] and prev[1] != "done":
            assert FRAME_ORDER[f["state"]] >= FRAME_ORDER[prev[1]], (
                f"event {eid}: frame {f['frame']} went from {prev[1]} to {f['state']} in attempt {f['attempt']}"
            )
        seen[key] = (eid, f["state"], f["attempt"])


# -- 1. a real job's frames, thumbnails, progress and events: test_conformance.py, on every engine


# -- 2. dropped connections resume with Last-Event-ID ----------------------------------------


def test_dropped_connection_resumes_without_gap_or_duplicate(service: ServiceProcess, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "drop", frames="1-8", chunk=2, env={"FRAME_SLEEP": "0.4"})
    client = service.client()
    jid = client.submit(str(bundle))["id"]

    seen: list[Any] = []
    last: Optional[int] = None
    connections = 0
    dropped_mid_job = False
    while not (seen and job_ended(seen[-1])):
        connections += 1
        assert connections < 500, "the job never ended on the stream"
        got = 0
        for event in client.events(job=jid, last_event_id=last, reconnect=False):
            seen.append(event)
            last = event.id
            got += 1
            if job_ended(event):
                break
            if got == 3:  # drop the connection mid-job, as a flaky network or a closed laptop would
                dropped_mid_job = dropped_mid_job or client.job(jid)["state"] not in JOB_FINAL
                break
    assert connections > 3 and dropped_mid_job
    assert wait_job(client, jid)["state"] == "succeeded"

    replay = drain(service, job=jid)
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids)), "duplicate events after resuming"
    assert ids == [r[0] for r in replay], "the resumed stream differs from a full replay (gap or duplicate)"
    assert [(e.kind, e.data) for e in seen] == [(r[1], r[2]) for r in replay]

    # the same from the unfiltered stream, resumed from an id in the middle of the log
    everything = drain(service)
    middle = everything[len(everything) // 2][0]
    rest = []
    for event in client.events(last_event_id=middle, reconnect=False):
        rest.append(event)
        if event.id == everything[-1][0]:
            break
    assert [(e.id, e.kind, e.data) for e in rest] == [r for r in everything if r[0] > middle]


# -- 3. service restarts: the follower resumes by itself --------------------------------------


def test_follower_resumes_across_restart_and_kill(service: ServiceProcess, tmp_path: Path) -> None:
    # chunks of 4 frames: a restart finds containers with some frames done and some to go
    bundle = make_bundle(tmp_path / "restart", frames="1-24", chunk=4, env={"FRAME_SLEEP": "0.6"})
    client = service.client()
    jid = client.submit(str(bundle))["id"]

    seen: list[Any] = []
    errors: list[BaseException] = []
    finished = threading.Event()

    def follow() -> None:
        try:
            for event in service.client().events(job=jid, max_backoff=0.5):
                seen.append(event)
                if job_ended(event):
                    break
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            finished.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()

    def frames_done() -> int:
        return sum(1 for e in list(seen) if e.kind == "frame" and e.data["frame"]["state"] == "done")

    wait_for(lambda: frames_done() >= 1, 60, interval=0.05, what="a frame done on the stream")
    service.restart()  # SIGTERM: a clean shutdown
    after = len(seen)

    def early_frame_of_a_chunk_done() -> bool:  # its container has frames still to render
        return any(
            e.kind == "frame"
            and e.data["frame"]["state"] == "done"
            and (e.data["frame"]["frame"] - 1) % 4 < 2
            for e in seen[after:]
        )

    wait_for(early_frame_of_a_chunk_done, 60, interval=0.05, what="a frame after the restart")
    assert client.job(jid)["state"] not in JOB_FINAL, "the job ended too soon to test a kill mid-job"
    service.kill()  # kill -9: no clean-up; the restarted service reads that container's log again
    time.sleep(1)
    service.start()

    assert finished.wait(120), "the follower did not see the job finish"
    assert not errors, errors
    follower.join(5)
    job = wait_job(client, jid)
    assert job["state"] == "succeeded", job
    assert seen[-1].data["job"]["state"] == "succeeded"
    ids = [e.id for e in seen]
    assert all(a < b for a, b in zip(ids, ids[1:])), "event ids not strictly increasing (duplicate?)"
    replay = drain(service, job=jid)
    assert ids == [r[0] for r in replay], "the follower missed events across the restarts"
    assert [(e.kind, e.data) for e in seen] == [(r[1], r[2]) for r in replay]
    assert [f["state"] for f in client.frames(jid)] == ["done"] * 24
    assert_frames_never_go_back(replay)


# -- 4 and 5. a missing output fails its frame; hpcdock follow --------------------------------


def test_missing_output_fails_frame_naming_path_and_follow_exits_1(
    service: ServiceProcess, tmp_path: Path
) -> None:
    bundle = make_bundle(
        tmp_path / "skip", frames="1-4", chunk=2, png=True, env={"FRAME_SLEEP": "0.3", "SKIP_FRAME": "3"}
    )
    client = service.client()
    jid = client.submit(str(bundle))["id"]
    result = service.cli("follow", str(jid), timeout=120)
    missing = str(bundle / "out" / "f.0003.png")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "frame     1 done" in result.stdout
    assert "frame     3 FAILED" in result.stdout and missing in result.stdout
    assert result.stdout.splitlines()[-1].startswith(f"job {jid} failed")

    job = client.job(jid)
    assert job["state"] == "failed" and job["frames_done"] == 3 and job["frames_failed"] == 1, job
    frames = {f["frame"]: f for f in client.frames(jid)}
    assert [frames[n]["state"] for n in (1, 2, 4)] == ["done"] * 3
    assert frames[3]["state"] == "failed" and missing in frames[3]["error"], frames[3]
    assert frames[3]["thumbnail_url"] is None
    tasks = client.tasks(jid)
    assert [t["state"] for t in tasks] == ["succeeded", "failed"]
    bad = tasks[1]
    assert bad["attempt"] == bad["max_attempts"] == 2 and bad["exit_code"] == 0
    assert missing in bad["error"] and "frame 3" in bad["error"]
    failed_events = [
        d["frame"] for _, k, d in drain(service, job=jid) if k == "frame" and d["frame"]["state"] == "failed"
    ]
    assert {(f["frame"], f["attempt"]) for f in failed_events} == {(3, 1), (3, 2)}
    assert all(missing in f["error"] for f in failed_events)

    # retried, the job runs again: follow must wait for the new outcome, not replay the old one
    client.retry(jid)
    result = service.cli("follow", str(jid), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert client.job(jid)["state"] == "failed", "follow returned while the retried job was still running"
    assert client.tasks(jid)[1]["attempt"] == 4


def test_follow_exits_0_and_shows_frames_arriving(service: ServiceProcess, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "ok", frames="1-4", chunk=2, env={"FRAME_SLEEP": "0.3"})
    client = service.client()
    jid = client.submit(str(bundle))["id"]
    result = service.cli("follow", str(jid), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    done = [line for line in lines if " done " in line and line.startswith("frame")]
    assert sorted(int(line.split()[1]) for line in done) == [1, 2, 3, 4], result.stdout
    assert any("frames 4/4" in line for line in lines)
    assert lines[-1] == f"job {jid} succeeded"
    # on a finished job follow answers at once
    t0 = time.monotonic()
    again = service.cli("follow", str(jid), timeout=60)
    assert again.returncode == 0 and time.monotonic() - t0 < 10


# -- 6. SSE details ---------------------------------------------------------------------------


def test_sse_ids_job_filter_heartbeat_and_last_event_id(service: ServiceProcess, tmp_path: Path) -> None:
    client = service.client()
    a = client.submit(str(make_bundle(tmp_path / "a", frames="1-2", chunk=2)))["id"]
    b = client.submit(str(make_bundle(tmp_path / "b", frames="1-3", chunk=3)))["id"]
    wait_job(client, a)
    wait_job(client, b)

    blocks = []
    for block in raw_blocks(service):
        blocks.append(block)
        if block == [": keepalive"]:
            break
    assert blocks[0] == [": connected"]
    events = [block for block in blocks[1:-1]]
    assert events and all(block[0].startswith("id: ") for block in events), events[:3]
    everything = [block_event(block) for block in events]
    assert [e[0] for e in everything] == list(range(1, len(everything) + 1))
    assert {e[1] for e in everything} == {"job", "task", "frame"}

    def job_of(event) -> int:
        _, kind, data = event
        return data["job"]["id"] if kind == "job" else data[kind]["job_id"]

    assert {job_of(e) for e in everything} == {a, b}
    only_a = drain(service, job=a)
    assert only_a and all(job_of(e) == a for e in only_a)
    assert only_a == [e for e in everything if job_of(e) == a]

    # Last-Event-ID (the header) and ?since= resume after the given id; the header wins
    mid = everything[len(everything) // 2][0]
    expected = [e for e in everything if e[0] > mid]
    got = []
    for block in raw_blocks(service, params={"since": 0}, headers={"Last-Event-ID": str(mid)}):
        if block == [": keepalive"]:
            break
        if block_event(block):
            got.append(block_event(block))
    assert got == expected
    assert drain(service, since=mid) == expected

    resp = service.raw("GET", "/v1/events", headers={"Last-Event-ID": "abc"})
    assert resp.status == 400 and resp.json()["error"]["field"] == "Last-Event-ID"

    # heartbeats keep an idle stream alive (here every second; 10 s by default)
    t0 = time.monotonic()
    beats = 0
    for block in raw_blocks(service, params={"since": everything[-1][0]}):
        assert block_event(block) is None, "no event expected on an idle service"
        if block == [": keepalive"]:
            beats += 1
            if beats == 2:
                break
    assert 1.5 < time.monotonic() - t0 < 6
