"""``hpcdock``: the command line for artists' shells and pipeline scripts.

Every command talks to the service through :class:`hpcdock.client.Client`; ``--json``
prints machine-readable output for scripts. Exit codes: 0 success, 1 the job failed or
the service refused, 2 bad usage, 3 no service.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO

from .client import Client, Event, ServiceError, ServiceUnavailable
from .protocol import JOB_FINAL, TASK_FINAL, EventKind, event_object, parse_frame_list


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpcdock", description="Submit and follow hpcdock render jobs.")
    p.add_argument(
        "--url",
        help="service address: unix:///path/to/service.sock or http://host:port "
        "(default $HPCDOCK_URL, else your own service's private socket)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("url", help="print the service address this client uses")
    s = sub.add_parser("submit", help="submit a job bundle directory")
    s.add_argument("bundle", help="job bundle directory (template.yaml, hpcdock.yaml)")
    s.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a job parameter, e.g. -p Frames=1-10",
    )
    s.add_argument("--priority", type=int, help="0 (low) to 100 (high); default from hpcdock.yaml or 50")
    s.add_argument("--name", help="job name shown in the monitor")
    s.add_argument(
        "--follow", action="store_true", help="show live progress; exit 0 only if the job succeeds"
    )
    s.add_argument("--json", action="store_true", help="print the job as JSON")
    j = sub.add_parser("jobs", help="list jobs")
    j.add_argument("--json", action="store_true")
    f = sub.add_parser("follow", help="show a job's live progress until it ends")
    f.add_argument("job", type=int)
    lg = sub.add_parser("logs", help="print a task's log")
    lg.add_argument("task", type=int)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing while the task runs")
    c = sub.add_parser("cancel", help="cancel a job")
    c.add_argument("job", type=int)
    r = sub.add_parser("retry", help="retry a job's failed tasks, or render just some frames again")
    r.add_argument("job", type=int)
    which = r.add_mutually_exclusive_group()
    which.add_argument(
        "--frames",
        type=_frame_list,
        metavar="LIST",
        help="render only these frames again, e.g. 17,40-42 (the others stay as they are)",
    )
    which.add_argument("--flagged", action="store_true", help="render again every frame a check flagged")
    r.add_argument("--step", help="the step whose frames these are (default: the last step that has each)")
    fr = sub.add_parser("frames", help="list a job's frames with their state, flags and paths")
    fr.add_argument("job", type=int)
    fr.add_argument("--flagged", action="store_true", help="only the frames a check flagged")
    fr.add_argument("--json", action="store_true")
    t = sub.add_parser("tasks", help="list a job's tasks")
    t.add_argument("job", type=int)
    t.add_argument("--json", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        client = Client(url=args.url)
    except ServiceError as exc:
        print(f"hpcdock: {exc}", file=sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](client, args)
    except ServiceUnavailable as exc:
        print(f"hpcdock: {exc}. Start it with: hpcdock-service &", file=sys.stderr)
        return 3
    except ServiceError as exc:
        print(f"hpcdock: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _submit(client: Client, args: argparse.Namespace) -> int:
    params: Dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"hpcdock: -p {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        params[name] = value
    bundle = os.path.abspath(args.bundle)
    job = client.submit(bundle, params or None, priority=args.priority, name=args.name)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(
            f"job {job['id']} submitted: {job['name']} ({job['tasks_total']} tasks, "
            f"{job['frames_total']} frames)"
        )
    return _follow_job(client, job["id"], quiet=args.json) if args.follow else 0


def _jobs(client: Client, args: argparse.Namespace) -> int:
    jobs = client.jobs()
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    print(f"{'ID':>5}  {'STATE':<10} {'TASKS':>9} {'FRAMES':>11}  NAME")
    for job in jobs:
        waits = sorted({s["waiting_for"] for s in job.get("steps", []) if s.get("waiting_for")})
        waiting = f"  (waiting for {', '.join(waits)})" if waits else ""
        print(
            f"{job['id']:>5}  {job['state']:<10} {job['tasks_done']:>4}/{job['tasks_total']:<4} "
            f"{job['frames_done']:>5}/{job['frames_total']:<5}  {job['name']}{waiting}"
        )
    return 0


def _tasks(client: Client, args: argparse.Namespace) -> int:
    tasks = client.tasks(args.job)
    if args.json:
        print(json.dumps(tasks, indent=2))
        return 0
    for t in tasks:
        frames = f"{t['frames'][0]}-{t['frames'][-1]}" if t["frames"] else "-"
        waiting = f"waiting for {t['waiting_for']}  " if t.get("waiting_for") else ""
        status = f"[{t['status']}]  " if t.get("status") else ""
        print(
            f"{t['id']:>6}  {t['step']:<14} {t['state']:<10} attempt {t['attempt']}/{t['max_attempts']} "
            f"frames {frames:<12} {t['progress']:5.1f}%  {waiting}{status}{t['error'] or ''}"
        )
    return 0


def _follow(client: Client, args: argparse.Namespace) -> int:
    return _follow_job(client, args.job)


def _logs(client: Client, args: argparse.Namespace) -> int:
    offset = 0
    while True:
        text, offset = client.log(args.task, offset)
        sys.stdout.write(text)
        sys.stdout.flush()
        if not args.follow or (not text and client.task(args.task)["state"] in TASK_FINAL):
            return 0
        if not text:
            time.sleep(0.5)


def _url(client: Client, args: argparse.Namespace) -> int:
    print(client.url)
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job)
    print(f"job {job['id']}: {job['state']}")
    return 0


def _frame_list(text: str) -> List[int]:
    """argparse's type for ``--frames``: a ValueError's message becomes the usage error (exit 2)."""
    try:
        return parse_frame_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _retry(client: Client, args: argparse.Namespace) -> int:
    if args.step and not (args.frames or args.flagged):
        print("hpcdock: --step goes with --frames or --flagged", file=sys.stderr)
        return 2
    job = client.retry(args.job, frames=args.frames, flagged=args.flagged, step=args.step)
    print(f"job {job['id']}: {job['state']}")
    return 0


def _frames(client: Client, args: argparse.Namespace) -> int:
    frames = client.frames(args.job)
    if args.flagged:
        frames = [f for f in frames if f["flags"]]
    if args.json:
        print(json.dumps(frames, indent=2))
        return 0
    for f in frames:
        print(f"{f['frame']:>7}  {f['step']:<14} {f['state']:<8} {f['output'] or '-'}")
        if f["error"]:
            print(f"{'':>9}error: {f['error']}")
        for flag in f["flags"]:
            print(f"{'':>9}{flag['check']}: {flag['reason']}")
    return 0


_COMMANDS = {
    "submit": _submit,
    "jobs": _jobs,
    "follow": _follow,
    "logs": _logs,
    "cancel": _cancel,
    "retry": _retry,
    "frames": _frames,
    "tasks": _tasks,
    "url": _url,
}


# -- live progress --------------------------------------------------------------------------


def _follow_job(client: Client, job_id: int, quiet: bool = False, out: TextIO = sys.stdout) -> int:
    """Print progress from the event stream until the job ends; 0 only if it succeeded."""
    since = client.health().get("last_event_id")  # show what happens from now, not the job's history
    job = client.job(job_id)
    printer = _ProgressPrinter(out, quiet)
    printer.job(job)
    if job["state"] not in JOB_FINAL:
        for event in client.events(job=job_id, last_event_id=since):
            # An ending event counts only once the job itself says so: a retry can follow it.
            if printer.handle(event) and client.job(job_id)["state"] in JOB_FINAL:
                break
        job = client.job(job_id)
    printer.finish(job)
    return 0 if job["state"] == "succeeded" else 1


class _ProgressPrinter:
    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.last: Dict[str, Any] = {}
        self.statuses: Dict[int, str] = {}  # each task's status line, as last shown

    def handle(self, event: Event) -> bool:
        """Show one event; True when the job has ended."""
        obj = event_object(event.kind, event.data)
        if event.kind == EventKind.JOB:
            self.job(obj)
            return obj["state"] in JOB_FINAL
        if event.kind == EventKind.TASK and not self.quiet:
            t = obj
            status = t.get("status")
            if status and self.statuses.get(t["id"]) != status:
                self.statuses[t["id"]] = status
                self._line(f"task {t['id']}: {status}")
            if t["state"] == "failed" or (t["state"] == "pending" and t.get("error")):
                self._line(f"task {t['id']} attempt {t['attempt']} failed: {t.get('error')}")
        if event.kind == EventKind.FRAME and not self.quiet:
            f = obj
            if f["state"] == "done":
                self._line(f"frame {f['frame']:>5} done  {f['output'] or ''}")
            elif f["state"] == "failed":
                self._line(f"frame {f['frame']:>5} FAILED {f.get('error') or ''}")
        return False

    def job(self, job: Dict[str, Any]) -> None:
        self.last = job
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        frames = f"frames {job['frames_done']}/{job['frames_total']}" if job["frames_total"] else ""
        self._line(
            f"[{elapsed:6.1f}s] job {job['id']} {job['state']:<9} tasks {job['tasks_done']}/"
            f"{job['tasks_total']} ({job['tasks_running']} running, {job['tasks_failed']} failed) {frames}"
        )

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def finish(self, job: Dict[str, Any]) -> None:
        if self.quiet:
            return
        msg = f"job {job['id']} {job['state']}"
        if job.get("error"):
            msg += f": {job['error']}"
        if job.get("frames_flagged"):
            msg += (
                f" ({job['frames_flagged']} frame(s) flagged by the checks: hpcdock frames {job['id']} --flagged; "
                f"render them again with hpcdock retry {job['id']} --flagged)"
            )
        self._line(msg)


if __name__ == "__main__":
    sys.exit(main())
