"""Memory and blocking bombs at submit, against a real service process: each is refused with a
4xx naming the limit within 10 s, and the process never grows past 500 MB."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hpcdock.client import ServiceError

from tests.helpers import ServiceProcess, make_bundle
from tests.unit.test_bundle_limits import BILLION_LAUGHS

pytestmark = pytest.mark.engine

RSS_LIMIT_MB = 500
ANSWER_WITHIN_S = 10


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} for process {pid}")


class RssWatch:
    """Samples the service's RSS while a bomb is in flight; kills it far past the limit so a
    regression fails the test instead of exhausting the shared machine."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, _rss_mb(self.pid))
            except (OSError, AssertionError):
                return
            if self.peak > 3 * RSS_LIMIT_MB:
                os.kill(self.pid, 9)
                return

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _frames_bomb(b: Path) -> None:
    (b / "parameter_values.yaml").write_text("parameterValues:\n- {name: Frames, value: 1-100000000}\n")


def _laughs(b: Path) -> None:
    (b / "parameter_values.yaml").write_text(BILLION_LAUGHS)


def _dev_zero(b: Path) -> None:
    (b / "template.yaml").unlink()
    (b / "template.yaml").symlink_to("/dev/zero")


def _fifo(b: Path) -> None:
    (b / "template.yaml").unlink()
    os.mkfifo(b / "template.yaml")


def _huge_template(b: Path) -> None:
    step = (
        "- name: s{i}\n  script:\n    actions:\n      onRun:\n        command: sh\n"
        "        args: ['-c', 'echo {i} {pad}']\n"
    )
    head = "specificationVersion: jobtemplate-2023-09\nname: huge\nsteps:\n"
    (b / "template.yaml").write_text(head + "".join(step.format(i=i, pad="x" * 200) for i in range(170_000)))
    assert (b / "template.yaml").stat().st_size > 50 * 1000 * 1000


def _deep_yaml(b: Path) -> None:
    (b / "hpcdock.yaml").write_text("image: " + "[" * 100_000 + "]" * 100_000 + "\n")


BOMBS = {
    "Frames=1-100000000": (_frames_bomb, "parameter_values", "limits.max_tasks_per_job"),
    "516-byte billion laughs": (_laughs, "parameter_values.yaml", "limits.max_yaml_nodes"),
    "template.yaml -> /dev/zero": (_dev_zero, "template.yaml", "symbolic link"),
    "template.yaml is a FIFO": (_fifo, "template.yaml", "not a regular file"),
    "170k-step template": (_huge_template, "template.yaml", "limits.max_template_bytes"),
    "deeply nested YAML": (_deep_yaml, "hpcdock.yaml", "limits.max_yaml_depth"),
}


def test_submit_bombs_are_refused_fast_and_small(service: ServiceProcess, tmp_path: Path) -> None:
    client = service.client()
    assert service.proc is not None
    pid = service.proc.pid
    for name, (arm, field, reason) in BOMBS.items():
        bundle = make_bundle(tmp_path / name.replace(" ", "_").replace("/", "_"))
        arm(bundle)
        with RssWatch(pid) as watch:
            start = time.monotonic()
            with pytest.raises(ServiceError) as err:
                client.submit(str(bundle))
            took = time.monotonic() - start
        assert 400 <= err.value.status < 500, (name, err.value)
        assert field in err.value.field and reason in err.value.message, (name, err.value)
        assert took < ANSWER_WITHIN_S, f"{name}: answered after {took:.1f} s"
        assert watch.peak < RSS_LIMIT_MB, f"{name}: the service reached {watch.peak:.0f} MB"
    assert _rss_mb(pid, "VmHWM") < RSS_LIMIT_MB  # the peak over the process's whole life
    assert client.health()["ok"] and client.jobs() == []
