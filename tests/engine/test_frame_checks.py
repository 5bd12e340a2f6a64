"""Frame checks and retrying just the bad frames, through a real service and real rootless containers.

The "renderer" copies, for each frame, a file this test made beforehand: a smooth rendered
sequence, except for an all-black PNG at frame 3, an EXR with NaN pixels at frame 6 and a
PNG cut in half at frame 9. Exactly those three must be flagged, with their reasons, in the
API and the CLI; ``hpcdock retry --flagged`` must render those three again and nothing else.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ServiceProcess, dump, make_bundle, wait_job
from tests.unit.test_framecheck import exr, png, scene

pytestmark = pytest.mark.engine

BAD = {3: "black", 6: "nan", 9: "unreadable"}
SIZE = (320, 180)

COPY_SH = textwrap.dedent("""\
    #!/bin/sh
    # Renders a chunk ($1: "A-B" or "A") by copying each frame's prepared file into place.
    chunk=$1; start=${chunk%%-*}; end=${chunk##*-}
    f=$start
    while [ "$f" -le "$end" ]; do
      echo "::hpcdock::frame-start $f"
      out=$(printf "$OUT_PATTERN" "$f")
      cp "src/$f" "$out"
      echo "rendered frame $f"
      echo "::hpcdock::frame-done $f $PWD/$out"
      f=$((f + 1))
    done
    """)


def prepare(bundle: Path, bad: bool) -> None:
    src = bundle / "src"
    src.mkdir(exist_ok=True)
    for i in range(1, 13):
        png(src / f"{i}.png", scene(i, SIZE)).rename(src / str(i))
    if bad:
        png(src / "3.png", np.zeros((SIZE[1], SIZE[0], 3))).rename(src / "3")
        pixels = scene(6, SIZE)
        pixels[20:40, 50:90, :] = np.nan
        exr(src / "6.exr", pixels).rename(src / "6")
        whole = (src / "9").read_bytes()
        (src / "9").write_bytes(whole[: len(whole) // 2])


def test_bad_frames_are_flagged_and_retry_flagged_renders_only_them(
    service: ServiceProcess, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path / "seq", frames="1-12", chunk=4, png=True, settings={"fps": 12})
    (bundle / "render.sh").write_text(COPY_SH)
    prepare(bundle, bad=True)
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "succeeded", dump(job)  # policy warn: done and flagged
    assert job["frames_flagged"] == 3 and job["fps"] == 12.0, dump(job)

    frames = {f["frame"]: f for f in client.frames(job["id"])}
    assert {n: f["state"] for n, f in frames.items()} == {n: "done" for n in range(1, 13)}, dump(frames)
    flagged = {n: [fl["check"] for fl in f["flags"]] for n, f in frames.items() if f["flags"]}
    assert flagged == {n: [check] for n, check in BAD.items()}, dump(frames)
    assert "all black" in frames[3]["flags"][0]["reason"] and frames[3]["flags"][0]["values"]["max"] == 0
    assert frames[6]["flags"][0]["values"]["nan"] == 20 * 40 * 3, frames[6]["flags"]
    assert "truncated" in frames[9]["flags"][0]["reason"], frames[9]["flags"]

    cli = service.cli("frames", str(job["id"]), "--flagged")
    assert cli.returncode == 0, cli.stderr
    listed = [line.split()[0] for line in cli.stdout.splitlines() if line.split()[1:2] == ["render"]]
    assert listed == ["3", "6", "9"], cli.stdout
    for reason in ("black: all black", "nan: 2400 NaN", "unreadable: truncated"):
        assert reason in cli.stdout, cli.stdout
    follow = service.cli("follow", str(job["id"]))
    assert follow.returncode == 0 and "3 frame(s) flagged by the checks" in follow.stdout, follow.stdout
    as_json = json.loads(service.cli("frames", str(job["id"]), "--json").stdout)
    assert [f["frame"] for f in as_json] == list(range(1, 13)) and as_json[2]["flags"] == frames[3]["flags"]

    # Good frames replace the bad ones; everything else must stay exactly as it is.
    prepare(bundle, bad=False)
    keep = {n: (Path(f["output"]).stat().st_mtime_ns, f) for n, f in frames.items() if n not in BAD}
    old_tasks = client.tasks(job["id"])
    cli = service.cli("retry", str(job["id"]), "--flagged")
    assert cli.returncode == 0, cli.stderr
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded" and job["frames_flagged"] == 0, dump(job)

    tasks = client.tasks(job["id"])
    assert tasks[: len(old_tasks)] == old_tasks  # history kept: the old tasks are as they were
    new = tasks[len(old_tasks) :]
    assert [(t["frames"], t["params"], t["state"], t["attempt"]) for t in new] == [
        ([n], {"Frame": str(n)}, "succeeded", 1) for n in sorted(BAD)
    ], dump(new)
    for t in new:  # each container rendered its one frame and no other
        log = client.log(t["id"])[0]
        assert [line for line in log.splitlines() if line.startswith("rendered")] == [
            f"rendered frame {t['frames'][0]}"
        ]
    frames = {f["frame"]: f for f in client.frames(job["id"])}
    assert all(f["state"] == "done" and f["flags"] == [] for f in frames.values()), dump(frames)
    for n, (mtime, row) in keep.items():
        assert Path(row["output"]).stat().st_mtime_ns == mtime, f"frame {n} was written again"
        assert frames[n] == row, f"frame {n} changed"
    for n in BAD:
        assert frames[n]["task_id"] in {t["id"] for t in new} and frames[n]["thumbnail_url"]


def test_fail_policy_fails_the_bad_frame_and_api_retry_takes_frame_lists(
    service: ServiceProcess, tmp_path: Path
) -> None:
    bundle = make_bundle(
        tmp_path / "seq",
        frames="1-6",
        chunk=3,
        png=True,
        settings={"frame_checks": {"policy": "fail"}, "max_attempts": 1},
    )
    (bundle / "render.sh").write_text(COPY_SH)
    prepare(bundle, bad=True)
    client = service.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "failed", dump(job)
    frames = {f["frame"]: f for f in client.frames(job["id"])}
    assert [n for n, f in frames.items() if f["state"] == "failed"] == [3, 6], dump(frames)
    assert frames[3]["error"].startswith("all black") and "NaN" in frames[6]["error"]
    tasks = client.tasks(job["id"])
    assert [t["state"] for t in tasks] == ["failed", "failed"] and "frame 3" in tasks[0]["error"]

    for body, field in (
        ({"frames": [3], "flagged": True}, "flagged"),
        ({"frames": [99]}, "frames"),
        ({"frames": ["x"]}, "frames"),
        ({"frames": [3], "nope": 1}, "nope"),
    ):
        resp = service.raw("POST", f"/v1/jobs/{job['id']}/retry", json_body=body)
        assert resp.status in (400, 422) and field in resp.json()["error"]["field"], (body, resp.body)

    prepare(bundle, bad=False)
    job = client.retry(job["id"], frames=[3, 6])
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", dump(job)
    tasks = client.tasks(job["id"])
    # Each failed task's unfinished frame came along; the tasks whose frames moved are "replaced".
    assert [t["state"] for t in tasks] == ["replaced", "replaced", "succeeded", "succeeded"], dump(tasks)
    assert [t["frames"] for t in tasks[2:]] == [[3], [6]]
    assert all(f["state"] == "done" and not f["flags"] for f in client.frames(job["id"]))
