"""No task can make a later container mount a path outside the allowed roots, on real rootless Podman.

A task has write access to its output directories; engines follow symlinks when they bind
a mount. These tests plant symlinks the way a hostile task would and check that the next
container is refused, naming the path, and that the place the symlink points to was never
mounted (nothing read, nothing written there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hpcdock_service.bundle_loader import Mount
from hpcdock_service.engines.base import ContainerRequest, MountRefused
from hpcdock_service.mounts import MountPolicy

from tests.helpers import TEST_IMAGE, ServiceProcess, dump, make_bundle, remove_leftovers, wait_for, wait_job

pytestmark = pytest.mark.engine

SECRET = "the marker of a directory no job may mount"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the service's allowed roots, holding a marker file."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "marker.txt").write_text(SECRET + "\n")
    return path


@pytest.fixture
def roots_service(tmp_path: Path, engine_url: str):
    roots = tmp_path / "roots"
    roots.mkdir()
    svc = ServiceProcess(tmp_path / "svc", engine_url, config={"allowed_roots": [str(roots)]}).start()
    yield roots, svc
    svc.stop()
    remove_leftovers(svc)


def _step(name: str, script: str, after: str = "") -> dict:
    step = {"name": name, "script": {"actions": {"onRun": {"command": "sh", "args": ["-c", script]}}}}
    if after:
        step["dependencies"] = [{"dependsOn": after}]
    return step


def _only_the_marker(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["marker.txt"]
    assert (outside / "marker.txt").read_text() == SECRET + "\n"


def test_a_task_cannot_redirect_the_next_steps_output_mount(roots_service, outside: Path, engine) -> None:
    """Step 1 swaps a directory the job mounts read-write for a symlink; step 2 must not get it.

    On Docker, whose mounts are proven only after start, the first task itself is failed: its
    mounts are looked at after it has moved them or, when it has already exited, walked again.
    """
    roots, svc = roots_service
    bundle = roots / "job"
    cache = bundle / "out" / "a" / "cache"
    # out/a/cache is a mount point in the task's container, out/a is not: renaming out/a and
    # planting a symlink in its place is allowed to the task.
    plant = _step("plant", f"mv out/a out/a.old && mkdir out/a && ln -s {outside} out/a/cache && ls -l out/a")
    use = _step("use", "cat out/a/cache/marker.txt; echo written > out/a/cache/written.txt", after="plant")
    make_bundle(
        bundle,
        steps=[plant, use],
        settings={"frames": None, "outputs": ["out", "out/a/cache"], "max_attempts": 1},
    )
    client = svc.client()
    job = wait_job(client, client.submit(str(bundle))["id"])
    assert job["state"] == "failed", job
    assert cache.is_symlink(), "the first step did not plant its symlink: the test proves nothing"
    planted, used = client.tasks(job["id"])
    refused = used if engine.kind == "podman" else planted
    assert planted["state"] == ("succeeded" if refused is used else "failed"), dump(planted)
    assert refused["state"] == "failed" and refused["exit_code"] is None, dump(refused)
    assert "refused" in refused["error"] and str(cache) in refused["error"], dump(refused)
    # Podman refuses step 2 for the symlink; Docker may see the first task's rename in its mountinfo.
    assert "symbolic link" in refused["error"] or engine.kind == "docker", dump(refused)
    assert all(SECRET not in client.log(t["id"])[0] for t in (planted, used))
    _only_the_marker(outside)


def test_another_jobs_task_cannot_swap_a_bundles_out_dir_after_submit(roots_service, outside: Path) -> None:
    """A job's output directory holds another job's bundle; its task replaces that job's out/."""
    roots, svc = roots_service
    shared = roots / "shared"
    victim = shared / "victim"
    gate = _step("gate", "touch out/started; while [ ! -e go ]; do sleep 0.05; done")
    use = _step("use", "cat out/marker.txt; echo written > out/written.txt", after="gate")
    make_bundle(victim, steps=[gate, use], settings={"frames": None, "outputs": ["out"], "max_attempts": 1})
    client = svc.client()
    victim_job = client.submit(str(victim))
    assert (victim / "out").is_dir() and not (victim / "out").is_symlink()
    wait_for((victim / "out" / "started").exists, 60, what="the victim's first task to run")

    attack = _step("swap", f"cd {victim} && mv out out.old && ln -s {outside} out && touch go")
    make_bundle(
        roots / "attacker",
        steps=[attack],
        settings={"frames": None, "outputs": [str(shared)], "max_attempts": 1},
    )
    attacker_job = wait_job(client, client.submit(str(roots / "attacker"))["id"])
    assert attacker_job["state"] == "succeeded", attacker_job
    assert (victim / "out").is_symlink()

    victim_job = wait_job(client, victim_job["id"])
    assert victim_job["state"] == "failed", victim_job
    gated, used = client.tasks(victim_job["id"])
    assert gated["state"] == "succeeded", dump(gated)
    assert used["state"] == "failed" and f"mount of {victim / 'out'} refused" in used["error"], dump(used)
    _only_the_marker(outside)


def test_the_services_own_files_are_never_mountable(service: ServiceProcess, tmp_path: Path) -> None:
    """The default allowed roots hold the service's config and state here (all under /tmp)."""
    from hpcdock.client import ServiceError

    client = service.client()
    own = {
        "config": service.config_home / "hpcdock",
        "token": service.config_home / "hpcdock" / "token",
        "state": service.state_dir,
        "a parent of both": service.root,
    }
    for what, path in own.items():
        bundle = make_bundle(
            tmp_path / f"b-{what.replace(' ', '-')}",
            settings={"mounts": [{"source": str(path), "target": "/x", "readonly": False}]},
        )
        with pytest.raises(ServiceError) as err:
            client.submit(str(bundle))
        assert err.value.status == 400 and err.value.field == "hpcdock.yaml: mounts[0].source", (
            what,
            err.value,
        )
        assert "keeps to itself" in err.value.message, (what, err.value)
    assert client.jobs() == []


def test_a_symlink_swapped_in_after_the_check_is_caught_before_the_task_starts(
    engine, tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the path passes the walk, then turns into a symlink before the engine binds it.

    Only the container's own mountinfo, read after ``init`` and before ``start``, can tell.
    """
    if engine.kind != "podman":
        pytest.skip("Docker has no init: its mounts are proven only once the container runs")
    roots = tmp_path / "roots"
    out = roots / "job" / "out"
    out.mkdir(parents=True)
    monkeypatch.setattr(engine, "mount_policy", MountPolicy.build([str(roots)]))
    checked = engine._check_mounts

    def check_then_swap(mounts: list[Mount]):
        bound = checked(mounts)
        os.rename(out, roots / "job" / "out.old")
        os.symlink(outside, out)
        return bound

    monkeypatch.setattr(engine, "_check_mounts", check_then_swap)
    name = f"hpcdock-race-{os.getpid()}"
    request = ContainerRequest(
        name=name,
        image=TEST_IMAGE,
        command=["sh", "-c", "echo written > /o/written.txt"],
        env={},
        workdir="/",
        mounts=[Mount(str(out), "/o", False)],
        network=False,
        labels={},
    )
    try:
        with pytest.raises(MountRefused) as err:
            engine.create(request)
        assert str(out) in str(err.value) and f"bound {outside}" in str(err.value), err.value
        assert _named(engine, name) == []  # removed before it ever started
        _only_the_marker(outside)
    finally:
        for left in _named(engine, name):
            engine.remove(left["Id"])


def _named(engine, name: str) -> list[dict]:
    """The engine's containers of that name, started or not (``find`` removes a never-started one)."""
    return [
        c
        for c in engine.client.api.containers(all=True)
        if name in [n.lstrip("/") for n in c.get("Names") or []]
    ]
