#!/usr/bin/env python3
"""hpcdock demo: render the bouncing-ball example as containers and watch the frames arrive.

Run by ``make demo`` (as the unprivileged engine user, from the repository root, with the
project's virtual environment). Stages:

1. build the POV-Ray image (``images/povray/build.sh``; reused when its recipe is unchanged);
2. start ``hpcdock-service`` unless one already answers (it is left running afterwards);
3. submit ``examples/bouncing-ball`` in place and show live progress;
4. write an animated preview of the frames and check that every frame is there.

It prints how long each stage took. Exit status: 0 when every frame rendered, 1 when the
job failed (with the reason), 2 when a stage before the render failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "examples" / "bouncing-ball"
OUT = BUNDLE / "out"
PREVIEW = BUNDLE / "preview.gif"
FRAMES = range(1, 49)
FRAME_NAME = "ball.{:04d}.png"


def say(text: str = "") -> None:
    print(f"demo: {text}" if text else "", flush=True)


class Failed(Exception):
    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


# -- stages ---------------------------------------------------------------------------------


def build_image() -> str:
    say("building the POV-Ray image (reused if its recipe is unchanged) ...")
    proc = subprocess.run([str(REPO / "images" / "povray" / "build.sh")], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise Failed(
            f"images/povray/build.sh failed with exit status {proc.returncode} (its messages are above)"
        )
    ref = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "localhost/hpcdock-povray:latest"
    say(f"image {ref}")
    return ref


def ensure_service():
    """Return (client, pid or None); pid is set when this demo started the service."""
    from hpcdock import paths
    from hpcdock.client import Client, ServiceError, ServiceUnavailable

    client = Client()
    try:
        health = client.health()
        say(f"hpcdock-service already running at {client.url} ({describe(health)}); using it")
        pid = _demo_service_pid(paths.state_dir() / "service.pid")
        if pid:
            say(f"(started by an earlier demo: pid {pid}; stop it with: kill {pid})")
        return client, None
    except ServiceUnavailable:
        pass
    except ServiceError as exc:
        raise Failed(f"something answers at {client.url} but not like hpcdock-service: {exc}") from None
    if os.environ.get("HPCDOCK_URL"):
        raise Failed(
            f"no hpcdock-service answers at HPCDOCK_URL={client.url}; start it there or unset HPCDOCK_URL"
        )

    state = paths.state_dir()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = state / "service.log"
    exe = shutil.which("hpcdock-service", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "hpcdock_service.main"]
    say(f"starting hpcdock-service at {client.url}; its log: {log_path}")
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        # Its own session: it outlives this demo (and make), like a daemon the artist started.
        proc = subprocess.Popen(
            cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(state)
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise Failed(
                "hpcdock-service exited with status {} at start; the end of {}:\n    {}".format(
                    proc.returncode, log_path, "\n    ".join(tail)
                )
            )
        try:
            health = client.health()
            break
        except ServiceError:
            time.sleep(0.2)
    else:
        raise Failed(f"hpcdock-service (pid {proc.pid}) did not answer within 60 s; see {log_path}")
    (state / "service.pid").write_text(f"{proc.pid}\n")
    say(f"hpcdock-service pid {proc.pid} is up ({describe(health)})")
    return client, proc.pid


def _demo_service_pid(pid_file: Path):
    """The pid an earlier demo wrote, if that process is still an hpcdock-service."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"hpcdock-service" in cmdline or b"hpcdock_service" in cmdline else None


def describe(health: dict) -> str:
    eng = health.get("engine") or {}
    if isinstance(eng, dict):
        rootless = "rootless " if eng.get("rootless") else ""
        eng = f"{rootless}{eng.get('engine', '?')} {eng.get('version', '')}".strip()
    return f"engine: {eng}, {health.get('slots', '?')} slots"


def clear_old_frames() -> int:
    """Remove frames of an earlier run, so every frame shown is rendered now."""
    removed = 0
    if OUT.is_dir():
        for p in OUT.glob("ball.*.png"):
            p.unlink()
            removed += 1
    return removed


def render(client) -> dict:
    from hpcdock import cli

    removed = clear_old_frames()
    if removed:
        say(f"removed {removed} frames of an earlier run from {OUT}")
    job = client.submit(str(BUNDLE))
    say(
        f"submitted {BUNDLE} as job {job['id']}: {job['tasks_total']} tasks (containers), "
        f"{job['frames_total']} frames; live progress:"
    )
    status = cli.main(["--url", client.url, "follow", str(job["id"])])
    if status == 130:
        raise Failed(
            f"interrupted; job {job['id']} keeps running (cancel it with: {_hpcdock()} cancel {job['id']})",
            130,
        )
    job = client.job(job["id"])
    if job["state"] != "succeeded":
        raise Failed(f"job {job['id']} {job['state']}: {failure_reason(client, job)}", 1)
    return job


def failure_reason(client, job: dict) -> str:
    lines = [job.get("error") or f"{job['tasks_failed']} of {job['tasks_total']} tasks failed"]
    bad = [f for f in client.frames(job["id"]) if f["state"] == "failed"]
    for f in bad[:5]:
        lines.append(f"frame {f['frame']}: {f.get('error') or 'failed'}")
    if len(bad) > 5:
        lines.append(f"... and {len(bad) - 5} more failed frames")
    failed = [t for t in client.tasks(job["id"]) if t["state"] == "failed"]
    if failed:
        t = failed[0]
        text, _ = client.log(t["id"])
        tail = "\n      ".join(text.rstrip().splitlines()[-12:])
        lines.append(
            f"task {t['id']} (frames {t['frames'][0]}-{t['frames'][-1]}): {t.get('error')}; "
            f"end of its log:\n      {tail}"
        )
        lines.append(f"whole log: {_hpcdock()} logs {t['id']}")
    return "\n    ".join(lines)


def check_frames(client, job: dict) -> list[Path]:
    from PIL import Image

    missing, broken = [], []
    paths = []
    for n in FRAMES:
        p = OUT / FRAME_NAME.format(n)
        paths.append(p)
        if not p.is_file():
            missing.append(n)
            continue
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception:  # any decoding error means a broken frame
            broken.append(n)
    done = sum(1 for f in client.frames(job["id"]) if f["state"] == "done")
    if missing or broken or done != len(FRAMES):
        raise Failed(
            f"job {job['id']} succeeded but frames are not all there: service reports {done}/"
            f"{len(FRAMES)} done; missing files {missing or 'none'}; unreadable {broken or 'none'}",
            1,
        )
    return paths


def write_preview() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make-preview.py"),
            str(OUT),
            str(PREVIEW),
            "--pattern",
            "ball.*.png",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise Failed(f"make-preview.py failed with exit status {proc.returncode}", 1)
    say(proc.stdout.strip().removeprefix("make-preview: "))


def _hpcdock() -> str:
    exe = Path(sys.executable).parent / "hpcdock"
    return str(exe) if exe.exists() else f"{sys.executable} -m hpcdock.cli"


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    times: list[tuple[str, float]] = []
    t_start = time.monotonic()

    def stage(name: str, fn, *args):
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            times.append((name, time.monotonic() - t0))

    started_pid = None
    status = 0
    try:
        stage("image", build_image)
        client, started_pid = stage("service start", ensure_service)
        job = stage("render", render, client)
        paths = check_frames(client, job)
        stage("preview", write_preview)
        say()
        say(f"all {len(paths)} frames rendered: {OUT}/ball.0001.png ... {paths[-1].name}")
        say(f"animated preview: {PREVIEW}")
    except Failed as exc:
        say(f"FAILED: {exc}")
        status = exc.status
    except KeyboardInterrupt:
        say("interrupted")
        status = 130
    times.append(("total", time.monotonic() - t_start))

    say()
    say("time per stage:")
    for name, secs in times:
        say(f"  {name:<14} {secs:6.1f} s")
    if started_pid:
        say()
        say(
            f"hpcdock-service (pid {started_pid}) keeps running for the next job; "
            f"the next 'make demo' reuses it. Stop it with: kill {started_pid}"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
