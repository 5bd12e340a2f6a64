#!/usr/bin/env python3
"""Screenshot the monitor panel in the middle of a real job (docs/img/panel.png).

Runs offscreen (no display needed). Submits a bundle (default: a copy of
examples/bouncing-ball, rendered by POV-Ray in the ``localhost/hpcdock-povray`` image) to a
running ``hpcdock-service`` -- or to a private one it starts with ``--spawn-service`` -- waits
until about half the frames are done with their thumbnails shown and a task is running,
selects a running frame so its log is tailing, and saves ``widget.grab()``. Run it as the
engine user, e.g.::

    python scripts/screenshot-panel.py --spawn-service              # private service, then stops it
    python scripts/screenshot-panel.py                               # your service, already running
    python scripts/screenshot-panel.py --job 12                      # a job already running
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
from hpcdock.panel.qt import QtCore, QtWidgets, qenum  # noqa: E402


def spawn_service(workdir: Path, engine_socket: str = None):
    """A private hpcdock-service with its own state, config, token and socket (in ``workdir``,
    which mkdtemp made private); returns (proc, url, token)."""
    url = f"unix://{workdir / 'service.sock'}"
    env = dict(os.environ, XDG_CONFIG_HOME=str(workdir / "config"), PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "hpcdock_service.main", "--listen", url, "--state-dir",
            str(workdir / "state"), "--slots", "2"]
    if engine_socket:
        args += ["--engine-socket", engine_socket]
    log = open(workdir / "service.log", "ab")  # noqa: SIM115 - handed to the child
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
    parser.add_argument("--bundle", default=str(ROOT / "examples" / "bouncing-ball"),
                        help="bundle to submit (copied to a scratch directory first)")
    parser.add_argument("--frames", default="1-48", help="the Frames parameter (default 1-48)")
    parser.add_argument("--job", type=int, help="watch this job instead of submitting one")
    parser.add_argument("--done", type=float, default=0.5, help="shoot once this fraction of frames is done")
    parser.add_argument("--size", default="1280x820")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "panel.png"))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="hpcdock-shot-"))
    proc = None
    url, token = args.url, args.token
    if args.spawn_service:
        proc, url, token = spawn_service(workdir, args.engine_socket)
    client = Client(url=url, token=token)
    submitted = None
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    window = QtWidgets.QMainWindow()
    window.setWindowTitle("hpcdock monitor")
    panel = create_panel(url=url, token=token, parent=window)
    window.setCentralWidget(panel)
    width, height = (int(v) for v in args.size.split("x"))
    window.resize(width, height)
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
        running = [r for r in range(panel.frames_model.rowCount())
                   if panel.frames_model.frame(r).get("state") == "running"]
        running.sort(key=lambda r: (tasks.get(panel.frames_model.frame(r).get("task_id")) or {}).get(
            "started_at") or float("inf"))
        row = running[0] if running else panel.frames_model.rowCount() - 1
        panel.frames_view.setCurrentIndex(panel.frames_model.index(row))
        done_keys = [panel.frames_model.thumb_key(f) for f in panel.frames_model.frames()
                     if f.get("state") == "done"]
        spin(app, lambda: all(k in panel.cache or k in panel.cache.missing for k in done_keys), 60,
             "the thumbnails")
        spin(app, lambda: panel.log_view.toPlainText().strip() != "", 30, "the log")
        settle = time.monotonic() + 8  # a few more lines of the running task, if they come
        spin(app, lambda: panel.log_view.toPlainText().count("\n") >= 6 or time.monotonic() > settle, 10,
             "more log")
        end = time.monotonic() + 1.0
        spin(app, lambda: time.monotonic() > end, 5, "a last repaint")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(str(out)):
            raise SystemExit(f"could not write {out}")
        counts = panel.frames_model.counts()
        print(f"wrote {out} ({width}x{height}); frames: {counts}")
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
