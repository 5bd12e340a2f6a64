"""The store's SQLite ``printf`` fast path against Python's ``str.format`` (real SQLite, no engine): a frame's
output path and a task's parameters come out of SQLite exactly as Python would write them, for negative
frames, widths and ``%`` in paths, or the pattern is formatted in Python."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from hpcdock_service.bundle_loader import load_bundle
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.records import printf_format
from hpcdock_service.store import Store

from tests.unit.test_scheduler import step

FRAMES = [-(2**63), -(2**31) - 1, -100000, -1234, -5, -1, 0, 1, 7, 99999, 2**31, 2**63 - 1]
# Patterns SQLite formats itself; each must give what str.format gives.
PRINTABLE = [
    "/o/f.{frame}.exr",
    "/o/f.{frame:d}.exr",
    "/o/f.{frame:04d}.exr",
    "/o/f.{frame:4d}.exr",
    "/o/f.{frame:0d}.exr",
    "/o/f.{frame:010d}.exr",
    "/o/f.{frame:99d}.exr",
    "{frame:02d}",
    "/o/100%/f%d_{frame:03d}%s%%.png",
    "%{frame:02d}%",
    "/ü/日本/{frame:6d}_€😀.png",
]
# Patterns the bundle accepts that printf would write otherwise (or not at all): Python formats them.
PYTHON_ONLY = [
    "/o/f.{frame:+05d}.exr",
    "/o/f.{frame: 4d}.exr",
    "/o/f.{frame:-4d}.exr",
    "/o/f.{frame:>6}.exr",
    "/o/f.{frame:*^9d}.exr",
    "/o/f.{frame:=06d}.exr",
    "/o/f.{frame:04}.exr",
    "/o/{frame}/f.{frame}.exr",
    "/o/{{x}}/f.{frame}.exr",
    "/o/a\x00b.{frame}.exr",
    "/o/f.{frame}\x00.exr",
]


@pytest.fixture(scope="module")
def sqlite() -> sqlite3.Connection:
    return sqlite3.connect(":memory:")


def printf(db: sqlite3.Connection, fmt: str, frame: int) -> str:
    return db.execute("SELECT printf(?, value) FROM json_each(?)", (fmt, f"[{frame}]")).fetchone()[0]


@pytest.mark.parametrize("pattern", PRINTABLE)
def test_sqlite_printf_writes_what_python_writes(sqlite: sqlite3.Connection, pattern: str) -> None:
    fmt = printf_format(pattern)
    assert fmt is not None
    assert [printf(sqlite, fmt, f) for f in FRAMES] == [pattern.format(frame=f) for f in FRAMES]


@pytest.mark.parametrize("pattern", PYTHON_ONLY)
def test_what_printf_would_write_otherwise_is_left_to_python(pattern: str) -> None:
    assert printf_format(pattern) is None


def bundle(root: Path, frames: str, chunk: int, output: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": "seq",
        "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": frames}],
        "steps": [step("render", "echo", chunk=chunk)],
    }
    (root / "template.yaml").write_text(yaml.safe_dump(template))
    (root / "hpcdock.yaml").write_text(
        yaml.safe_dump({"image": "img", "frames": {"parameter": "Frame", "output": output}})
    )
    return str(root)


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize(
    "name", ["100%_f.{frame:04d}.png", "f%d.{frame:3d}.png", "f.{frame:+05d}%.png", "f.{frame}.png"]
)
def test_a_job_with_negative_frames_stores_what_python_formats(tmp_path: Path, name: str, chunk: int) -> None:
    out = tmp_path / "out 100%"
    plan = load_bundle(
        bundle(tmp_path / "b", "-12--8,-2-3", chunk, str(out / name)),
        mount_policy=MountPolicy.build([str(tmp_path)]),
    )
    store = Store(tmp_path / "state" / "db.sqlite")
    try:
        job = store.create_job(plan)
        tasks = store.tasks(job.id)
        assert [t.params for t in tasks] == [t.params for t in plan.steps[0].tasks]
        assert [list(t.frames) for t in tasks] == [t.frames for t in plan.steps[0].tasks]
        expected = [*range(-12, -7), *range(-2, 4)]
        frames = store.frames(job.id)
        assert [(f.frame, f.output) for f in frames] == [
            (f, str(out / name).format(frame=f)) for f in expected
        ]
        owner = {f: t.id for t in tasks for f in t.frames}
        assert [f.task_id for f in frames] == [owner[f] for f in expected]
    finally:
        store.close()
