"""The OpenJD lane: the project's own templates (tests/engine/openjd/) run through hpcdock and
through the reference runtime, compared task by task.

The reference is openjd-sessions as ``openjd-cli`` (from PyPI) runs it on the host, driven by
``openjd_reference.py`` in ``.venv-openjd`` (``make venv-openjd``; ``make test`` builds it). hpcdock
runs the same template on the real rootless engine in ``localhost/hpcdock-openjd`` (Debian with
python3 and bash, ``images/openjd/build.sh``). Per task they must agree on: success or failure,
the failure message (``openjd_fail``, or why the runtime stopped the action), the status line,
the progress of a failed task, the values it printed (``VALUE ...`` lines) and the files it
produced. A succeeded task's progress is 100 in hpcdock whatever it last reported: a finished
task is complete, which the reference does not say.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from tests.helpers import REPO, ServiceProcess, dump, wait_for, wait_job

pytestmark = pytest.mark.engine

LANE = Path(__file__).parent / "openjd"
DRIVER = Path(__file__).parent / "openjd_reference.py"
REFERENCE_PYTHON = REPO / ".venv-openjd" / "bin" / "python"


@dataclass(frozen=True)
class Outcome:
    """What one task came to, as the test compares it."""

    succeeded: bool
    failure: Optional[str]  # the reference's fail message; hpcdock's task error
    status: Optional[str]
    progress: Optional[float]
    values: tuple[str, ...]


def values_of(lines: list[str]) -> tuple[str, ...]:
    return tuple(line.strip() for line in lines if line.startswith("VALUE "))


@pytest.fixture(scope="session")
def openjd_image(engine_url: str) -> str:
    proc = subprocess.run(
        [str(REPO / "images" / "openjd" / "build.sh")], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"images/openjd/build.sh failed:\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def reference_python() -> Path:
    if not REFERENCE_PYTHON.exists():
        pytest.fail(f"{REFERENCE_PYTHON} is missing: `make venv-openjd` installs openjd-cli there")
    return REFERENCE_PYTHON


def run_reference(
    python: Path, template: Path, values: dict[str, str], sessions: Path
) -> dict[str, tuple[dict[str, Any], Outcome]]:
    sessions.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(python), str(DRIVER), str(template), json.dumps(values), str(sessions)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"the reference runtime failed:\n{proc.stderr[-3000:]}"
    found = {}
    for task in json.loads(proc.stdout):
        outcome = Outcome(
            task["succeeded"],
            task["fail_message"],
            task["status"],
            task["progress"],
            values_of(task["output"]),
        )
        found[json.dumps(task["params"], sort_keys=True)] = (task, outcome)
    return found


def run_hpcdock(
    service: ServiceProcess, image: str, template: Path, bundle: Path, values: dict[str, str]
) -> tuple[dict[str, Outcome], dict[str, Any]]:
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, bundle / "template.yaml")
    (bundle / "hpcdock.yaml").write_text(yaml.safe_dump({"image": image, "max_attempts": 1}))
    client = service.client()
    job = wait_job(client, client.submit(str(bundle), values)["id"], timeout=240)
    found = {}
    for task in client.tasks(job["id"]):
        log = client.log(task["id"])[0]
        failure = None if task["state"] == "succeeded" else task["error"]
        outcome = Outcome(
            task["state"] == "succeeded",
            failure,
            task["status"],
            task["progress"],
            values_of(log.splitlines()),
        )
        found[json.dumps(task["params"], sort_keys=True)] = outcome
    return found, job


def report(service: ServiceProcess, job: dict[str, Any]) -> str:
    """The job, and each task's error and log: what a failed assertion needs to be understood."""
    client = service.client()
    tasks = [
        f"--- task {t['params']} {t['state']}: {t['error']}\n{client.log(t['id'])[0][-1500:]}"
        for t in client.tasks(job["id"])
    ]
    return "\n".join([dump(job), *tasks])


def compare(reference: dict[str, tuple[dict[str, Any], Outcome]], ours: dict[str, Outcome]) -> None:
    assert set(ours) == set(reference), dump({"hpcdock": list(ours), "reference": list(reference)})
    for key, (raw, ref) in reference.items():
        got = ours[key]
        where = f"task {key}: hpcdock {got} vs reference {ref} ({dump(raw)})"
        assert got.succeeded == ref.succeeded, where
        assert got.values == ref.values, where
        assert got.status == ref.status, where
        if ref.failure:
            assert got.failure and ref.failure in got.failure, where
        if ref.succeeded:
            assert got.progress == 100.0, where
        else:
            assert got.progress == (ref.progress or 0.0), where


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*"))
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    assert files_a == files_b, (files_a, files_b)
    for name in files_a:
        if (a / name).is_file():
            assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs"


def test_stdout_messages_agree_with_the_reference(
    service: ServiceProcess, openjd_image: str, reference_python: Path, tmp_path: Path
) -> None:
    template = LANE / "messages.yaml"
    reference = run_reference(reference_python, template, {}, tmp_path / "sessions")
    ours, job = run_hpcdock(service, openjd_image, template, tmp_path / "bundle", {})
    assert job["state"] == "failed", dump(job)
    compare(reference, ours)
    # the lane's own cases are what they say: a status line, a failure reason, a stopped near miss
    assert ours['{"Case": "works"}'].status == "finishing up"
    assert ours['{"Case": "fails"}'].failure.startswith("the input was empty")  # type: ignore[union-attr]
    assert ours['{"Case": "nearmiss"}'].values == ("VALUE case=nearmiss",)


def test_embedded_files_agree_with_the_reference(
    service: ServiceProcess, openjd_image: str, reference_python: Path, tmp_path: Path
) -> None:
    template = LANE / "embedded.yaml"
    reference = run_reference(
        reference_python, template, {"Out": str(tmp_path / "ref" / "out")}, tmp_path / "sessions"
    )
    ours, job = run_hpcdock(
        service, openjd_image, template, tmp_path / "bundle", {"Out": str(tmp_path / "bundle" / "out")}
    )
    assert job["state"] == "succeeded", report(service, job)
    compare(reference, ours)
    assert ours['{"Frame": "2"}'].values[0] == "VALUE data=hello from frame 2"
    same_tree(tmp_path / "ref" / "out", tmp_path / "bundle" / "out")


def test_environments_and_their_embedded_files_agree_with_the_reference(
    service: ServiceProcess, openjd_image: str, reference_python: Path, tmp_path: Path
) -> None:
    """The reference enters the environments around each task; hpcdock once per session. What the
    tasks see and produce, and what onExit leaves, must be the same."""
    template = LANE / "environments.yaml"
    reference = run_reference(
        reference_python, template, {"Out": str(tmp_path / "ref" / "out")}, tmp_path / "sessions"
    )
    out = tmp_path / "bundle" / "out"
    ours, job = run_hpcdock(service, openjd_image, template, tmp_path / "bundle", {"Out": str(out)})
    assert job["state"] == "succeeded", report(service, job)
    compare(reference, ours)
    assert ours['{"Frame": "2"}'].values == (
        "VALUE tool=tool says hello (tmp)",  # a nameless file's name is the runtime's: tmp...
        "VALUE var=hello from the job",
        "VALUE enter_runnable=yes enter.sh",
        "VALUE scene=teapot for hello in tmp",
    )
    wait_for(lambda: (out / "exited.txt").exists(), 30, what="the job environment's onExit")
    same_tree(tmp_path / "ref" / "out", out)


def _path_inputs(root: Path) -> dict[str, str]:
    (root / "textures").mkdir(parents=True)
    (root / "textures" / "wood.png").write_text("w")
    (root / "textures" / "rust.png").write_text("r")
    (root / "scene.txt").write_text("a teapot")
    (root / "cache").mkdir()
    (root / "cache" / "count").write_text("41\n")
    (root / "renders").mkdir()
    return {
        "Scene": str(root / "scene.txt"),
        "Textures": str(root / "textures"),
        "Image": str(root / "renders" / "image.txt"),
        "Cache": str(root / "cache"),
    }


def test_path_parameters_agree_with_the_reference(
    service: ServiceProcess, openjd_image: str, reference_python: Path, tmp_path: Path
) -> None:
    template = LANE / "paths.yaml"
    reference = run_reference(
        reference_python, template, _path_inputs(tmp_path / "ref"), tmp_path / "sessions"
    )
    ours, job = run_hpcdock(
        service, openjd_image, template, tmp_path / "bundle", _path_inputs(tmp_path / "bundle" / "data")
    )
    assert job["state"] == "succeeded", report(service, job)
    compare(reference, ours)
    (outcome,) = ours.values()
    assert "VALUE raw_equals_mapped=yes" in outcome.values and "VALUE count_before=41" in outcome.values
    same_tree(tmp_path / "ref", tmp_path / "bundle" / "data")


def test_host_requirements_linux_meets_agree_with_the_reference(
    service: ServiceProcess, openjd_image: str, reference_python: Path, tmp_path: Path
) -> None:
    template = LANE / "host.yaml"
    reference = run_reference(reference_python, template, {}, tmp_path / "sessions")
    ours, job = run_hpcdock(service, openjd_image, template, tmp_path / "bundle", {})
    assert job["state"] == "succeeded", report(service, job)
    compare(reference, ours)


def test_an_input_path_is_read_only_in_the_container(
    service: ServiceProcess, openjd_image: str, tmp_path: Path
) -> None:
    """What the reference cannot show: dataFlow IN is mounted read-only, OUT read-write."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scene.txt").write_text("keep me")
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "ro",
        "parameterDefinitions": [
            {"name": "Scene", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "Out", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"},
        ],
        "steps": [
            {
                "name": "s",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": "bash",
                            "args": [
                                "-c",
                                'echo changed > "$1" && echo "VALUE wrote the input"; echo ok > "$2/result"',
                                "bash",
                                "{{Param.Scene}}",
                                "{{Param.Out}}",
                            ],
                        }
                    }
                },
            }
        ],
    }
    (bundle / "template.yaml").write_text(yaml.safe_dump(template))
    (bundle / "hpcdock.yaml").write_text(yaml.safe_dump({"image": openjd_image, "max_attempts": 1}))
    client = service.client()
    values = {"Scene": str(tmp_path / "in" / "scene.txt"), "Out": str(bundle / "out")}
    job = wait_job(client, client.submit(str(bundle), values)["id"])
    assert job["state"] == "succeeded", report(service, job)
    assert (tmp_path / "in" / "scene.txt").read_text() == "keep me"
    assert (bundle / "out" / "result").read_text() == "ok\n"
    (task,) = client.tasks(job["id"])
    log = client.log(task["id"])[0]
    assert values_of(log.splitlines()) == () and "Read-only file system" in log, log


def test_a_requirement_no_worker_meets_is_refused_at_submit(service: ServiceProcess, tmp_path: Path) -> None:
    from hpcdock.client import ServiceError

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    template = yaml.safe_load((LANE / "host.yaml").read_text())
    template["steps"][0]["hostRequirements"]["attributes"].append(
        {"name": "attr.custom.host_config", "anyOf": ["HostConfigB"]}
    )
    (bundle / "template.yaml").write_text(yaml.safe_dump(template))
    (bundle / "hpcdock.yaml").write_text(yaml.safe_dump({"image": "localhost/hpcdock-test:latest"}))
    with pytest.raises(ServiceError) as err:
        service.client().submit(str(bundle))
    assert err.value.status == 400, err.value
    assert "steps[0].hostRequirements.attributes" in str(err.value)
    assert "attr.custom.host_config" in str(err.value) and "attr.worker.os.family ['linux']" in str(err.value)
    assert service.client().jobs() == []
