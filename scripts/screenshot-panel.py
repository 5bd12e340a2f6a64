#!/usr/bin/env python3
"""Screenshot the monitor panel in the middle of a real job (docs/img/panel.png).

With ``--flagged`` it shows instead a job whose output checks flagged frames
(docs/img/panel-flagged.png): the job is played by the in-memory service the panel tests
use (tests/qt/fakes.py), with drawn thumbnails and flags shaped as the service reports
them, so the shot needs neither an engine nor a renderer.

Runs offscreen (no display needed). Submits a bundle (default: a copy of
examples/bouncing-ball, rendered by POV-Ray in the ``localhost/hpcdock-povray`` image) to a
running ``hpcdock-service`` -- or to a private one it starts with ``--spawn-service`` -- waits
until about half the frames are done with their thumbnails shown and a task is running,
selects a running frame so its log is tailing, and saves ``widget.grab()``. Run it as the
engine user, e.g.::

    python scripts/screenshot-panel.py --spawn-service              # private service, then stops it
    python scripts/screenshot-panel.py                               # your service, already running
    python scripts/screenshot-panel.py --job 12                      # a job already running
    python scripts/screenshot-panel.py --flagged                     # flagged frames, no service
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "houdini_plugin" / "python3.9libs"))

from hpcdock.client import Client  # noqa: E402
from hpcdock.panel import create_panel  # noqa: E402
from hpcdock.panel.qt import QtCore, QtGui, QtWidgets, qenum  # noqa: E402

#: the frames the --flagged shot marks bad, with the flags the service's checks give them
FLAGGED = {
    17: [
        {
            "check": "black",
            "reason": "all pixels black (max luminance 0.0000 <= 0.0010)",
            "values": {"max_luminance": 0.0},
        }
    ],
    30: [
        {
            "check": "nan",
            "reason": "2304 of 230400 pixels are NaN or Inf (1.0%)",
            "values": {"bad_pixels": 2304, "pixels": 230400},
        }
    ],
    41: [
        {
            "check": "unreadable",
            "reason": "truncated PNG: image data ends at byte 18432 of 96210",
            "values": {"bytes": 18432},
        }
    ],
}


def spawn_service(workdir: Path, engine_socket: str = None):
    """A private hpcdock-service with its own state, config, token and socket (in ``workdir``,
    which mkdtemp made private); returns (proc, url, token)."""
    url = f"unix://{workdir / 'service.sock'}"
    env = dict(os.environ, XDG_CONFIG_HOME=str(workdir / "config"), PYTHONUNBUFFERED="1")
    args = [
        sys.executable,
        "-m",
        "hpcdock_service.main",
        "--listen",
        url,
        "--state-dir",
        str(workdir / "state"),
        "--slots",
        "2",
    ]
    if engine_socket:
        args += ["--engine-socket", engine_socket]
    log = open(workdir / "service.log", "ab")  # handed to the child
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"hpcdock-service exited:\n{(workdir / 'service.log').read_text()[-2000:]}")
        try:
            token = (workdir / "config" / "hpcdock" / "token").read_text().strip()
            Client(url=url, token=token).health()
            return proc, url, token
        except Exception:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("hpcdock-service did not start within 60 s")


def ball_thumbnail(frame: int, frames: int, black: bool = False) -> bytes:
    """A 128x72 PNG of a ball bouncing over a checkerboard (a stand-in for a render)."""
    image = QtGui.QImage(128, 72, qenum(QtGui.QImage, "Format", "Format_RGB32"))
    image.fill(QtGui.QColor("#000000" if black else "#c9ced6"))
    if not black:
        painter = QtGui.QPainter(image)
        painter.setRenderHint(qenum(QtGui.QPainter, "RenderHint", "Antialiasing"), True)
        for y in range(36, 72, 6):
            for x in range(0, 128, 8):
                dark = ((x // 8) + (y // 6)) % 2
                painter.fillRect(x, y, 8, 6, QtGui.QColor("#5b6068" if dark else "#eef0f3"))
        phase = (frame % 16) / 16.0
        height = 4 * phase * (1 - phase)  # one bounce every 16 frames
        x = 10 + 100 * (frame - 1) / max(1, frames - 1)
        y = 50 - 40 * height
        painter.setBrush(QtGui.QColor("#c8413b"))
        painter.setPen(QtGui.QPen(QtGui.QColor("#7a1f1b"), 1))
        painter.drawEllipse(QtCore.QPointF(x, y), 7, 7)
        painter.end()
    buffer = QtCore.QBuffer()
    buffer.open(qenum(QtCore.QIODevice, "OpenModeFlag", "WriteOnly"))
    image.save(buffer, "PNG")
    return bytes(buffer.data())


def fake_flagged_job():
    """An in-memory service holding one job with ``FLAGGED`` frames; returns (service, job id, frame to show)."""
    sys.path.insert(0, str(ROOT / "tests" / "qt"))
    from fakes import FakeService, make_frame, make_job, make_task

    total, done, per_task = 48, 44, 4
    service = FakeService()
    out = "/farm/sh010/render/ball"
    service.put_job(
        make_job(
            1,
            "Bouncing ball (POV-Ray)",
            frames_total=total,
            frames_done=done,
            frames_flagged=len(FLAGGED),
            fps=24.0,
            tasks_total=total // per_task,
            tasks_done=done // per_task,
            tasks_running=1,
            started_at=time.time() - 96,
        ),
        emit=False,
    )
    for task_id in range(1, total // per_task + 1):
        first = (task_id - 1) * per_task + 1
        state = (
            "succeeded" if first + per_task - 1 <= done else ("running" if first <= done + 1 else "pending")
        )
        service.put_task(
            make_task(
                task_id,
                frames=tuple(range(first, first + per_task)),
                state=state,
                index=task_id - 1,
                progress=50.0 if state == "running" else 100.0,
            ),
            emit=False,
        )
    for f in range(1, total + 1):
        task_id = (f - 1) // per_task + 1
        state = "done" if f <= done else ("running" if f <= done + 2 else "waiting")
        frame = make_frame(
            f,
            state=state,
            task_id=task_id,
            flags=FLAGGED.get(f, []),
            output=f"{out}.{f:04d}.png" if state == "done" else None,
        )
        if FLAGGED.get(f, [{}])[0].get("check") == "unreadable":
            frame["thumbnail_url"] = None  # nothing to make a thumbnail of
        service.put_frame(frame, emit=False)
        if state == "done":
            service.thumbnails[(1, "render", f)] = ball_thumbnail(f, total, black=f == 17)
    shown = min(FLAGGED)
    task = (shown - 1) // per_task + 1
    service.append_log(
        task,
        "".join(
            f"::hpcdock::frame-start {f}\nrender.sh: frame {f} rendered in 4.{f % 10} s\n"
            f"::hpcdock::frame-done {f} {out}.{f:04d}.png\n"
            for f in range((task - 1) * per_task + 1, task * per_task + 1)
        ),
    )
    return service, 1, shown


def shoot_flagged(app, window, args) -> int:
    """The --flagged shot: the job's grid with the flagged frames' badges, the first one selected."""
    service, job_id, shown = fake_flagged_job()
    panel = create_panel(client_factory=service.client, parent=window)
    window.setCentralWidget(panel)
    window.show()
    try:
        panel.select_job(job_id)
        spin(app, lambda: panel.frames_model.rowCount() == len(service.frames), 30, "the frames")
        row = panel.frames_model.row_of("render", shown)
        panel.frames_view.setCurrentIndex(panel.frames_model.index(row))
        done_keys = [
            panel.frames_model.thumb_key(f)
            for f in panel.frames_model.frames()
            if f.get("state") == "done" and f.get("thumbnail_url")
        ]
        spin(
            app,
            lambda: all(k in panel.cache or k in panel.cache.missing for k in done_keys),
            60,
            "the thumbnails",
        )
        spin(app, lambda: panel.log_view.toPlainText().strip() != "", 30, "the log")
        return save(app, window, panel, Path(args.out))
    finally:
        panel.shutdown()
        service.stop()


def save(app, window, panel, out: Path) -> int:
    end = time.monotonic() + 1.0
    spin(app, lambda: time.monotonic() > end, 5, "a last repaint")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise SystemExit(f"could not write {out}")
    print(f"wrote {out} ({window.width()}x{window.height()}); frames: {panel.frames_model.counts()}")
    return 0


def spin(app, until, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        app.processEvents(qenum(QtCore.QEventLoop, "ProcessEventsFlag", "AllEvents"), 50)
        time.sleep(0.02)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="service address (default: $HPCDOCK_URL or the local default)")
    parser.add_argument("--token", help="bearer token (default: the one in the hpcdock config dir)")
    parser.add_argument("--spawn-service", action="store_true", help="start a private service for the shot")
    parser.add_argument("--engine-socket", help="engine socket for --spawn-service (default: the service's)")
    parser.add_argument(
        "--bundle",
        default=str(ROOT / "examples" / "bouncing-ball"),
        help="bundle to submit (copied to a scratch directory first)",
    )
    parser.add_argument("--frames", default="1-48", help="the Frames parameter (default 1-48)")
    parser.add_argument("--job", type=int, help="watch this job instead of submitting one")
    parser.add_argument("--done", type=float, default=0.5, help="shoot once this fraction of frames is done")
    parser.add_argument("--size", default="1280x820")
    parser.add_argument(
        "--flagged",
        action="store_true",
        help="a job with flagged frames from the tests' in-memory service (no service needed)",
    )
    parser.add_argument(
        "--out",
        help="the PNG to write (default docs/img/panel.png, docs/img/panel-flagged.png with --flagged)",
    )
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    args.out = args.out or str(ROOT / "docs" / "img" / ("panel-flagged.png" if args.flagged else "panel.png"))
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    window = QtWidgets.QMainWindow()
    window.setWindowTitle("hpcdock monitor")
    width, height = (int(v) for v in args.size.split("x"))
    window.resize(width, height)
    if args.flagged:
        return shoot_flagged(app, window, args)

    workdir = Path(tempfile.mkdtemp(prefix="hpcdock-shot-"))
    proc = None
    url, token = args.url, args.token
    if args.spawn_service:
        proc, url, token = spawn_service(workdir, args.engine_socket)
    client = Client(url=url, token=token)
    submitted = None
    panel = create_panel(url=url, token=token, parent=window)
    window.setCentralWidget(panel)
    window.show()
    try:
        job_id = args.job
        if job_id is None:
            bundle = workdir / Path(args.bundle).name
            shutil.copytree(args.bundle, bundle, ignore=shutil.ignore_patterns("out", "preview.*"))
            (bundle / "out").mkdir(exist_ok=True)
            submitted = client.submit(str(bundle), parameter_values={"Frames": args.frames})
            job_id = submitted["id"]
            print(f"submitted {bundle} as job {job_id}")
        panel.select_job(job_id)
        spin(app, lambda: panel.frames_model.job_id == job_id, 60, "the job to show")

        def middle() -> bool:
            counts = panel.frames_model.counts()
            total = sum(counts.values())
            done = counts.get("done", 0)
            return bool(total) and done >= args.done * total and (counts.get("running") or done == total)

        spin(app, middle, args.timeout, f"{args.done:.0%} of the frames to be done")
        # follow the log of the running task that has been at it longest (the most to show)
        tasks = panel.frames_model.tasks
        running = [
            r
            for r in range(panel.frames_model.rowCount())
            if panel.frames_model.frame(r).get("state") == "running"
        ]
        running.sort(
            key=lambda r: (
                (tasks.get(panel.frames_model.frame(r).get("task_id")) or {}).get("started_at")
                or float("inf")
            )
        )
        row = running[0] if running else panel.frames_model.rowCount() - 1
        panel.frames_view.setCurrentIndex(panel.frames_model.index(row))
        done_keys = [
            panel.frames_model.thumb_key(f) for f in panel.frames_model.frames() if f.get("state") == "done"
        ]
        spin(
            app,
            lambda: all(k in panel.cache or k in panel.cache.missing for k in done_keys),
            60,
            "the thumbnails",
        )
        spin(app, lambda: panel.log_view.toPlainText().strip() != "", 30, "the log")
        settle = time.monotonic() + 8  # a few more lines of the running task, if they come
        spin(
            app,
            lambda: panel.log_view.toPlainText().count("\n") >= 6 or time.monotonic() > settle,
            10,
            "more log",
        )
        save(app, window, panel, Path(args.out))
    finally:
        panel.shutdown()
        if submitted is not None:
            try:
                client.cancel(submitted["id"])
            except Exception as exc:
                print(f"could not cancel job {submitted['id']}: {exc}", file=sys.stderr)
        if proc is not None:
            time.sleep(2)
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
