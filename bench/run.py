"""hpcdock benchmarks: dispatch against the raw engine, Swarm and Slurm, submission scale, event latency, panel.

One process, one run, one table (``make bench``; as a user with a rootless engine,
``.venv/bin/python bench/run.py``). Every ratio is against a baseline measured in the same
run, interleaved with the figure it is compared to, because a shared 2-core machine is noisy.

    python bench/run.py [--only dispatch,scale,latency,panel,checks,slurm,sessions] [--repeat 2] [--tasks 100]
                        [--sizes 1000,10000,100000] [--json out.json]

Traffic goes only to 127.0.0.1 and to the engines' unix sockets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "houdini_plugin" / "python3.9libs"))

from hpcdock.protocol import JOB_FINAL  # noqa: E402

from tests.helpers import TEST_IMAGE, ServiceProcess, make_bundle, remove_leftovers, wait_job  # noqa: E402

TARGETS = {
    "baseline": 0.9,
    "swarm": 2.0,
    "swarm_engine": 0.9,
    "accept_s": 1.0,
    "rss_mb": 300.0,
    "p95_ms": 200.0,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- engines ------------------------------------------------------------------------------------


def runtime_dir() -> str:
    return os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"


def podman_url() -> Optional[str]:
    sock = Path(runtime_dir()) / "podman" / "podman.sock"
    if not sock.exists():
        if shutil.which("podman") is None:
            return None
        sock.parent.mkdir(parents=True, exist_ok=True)
        subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
    return f"unix://{sock}" if sock.exists() else None


def docker_url() -> tuple[Optional[str], str]:
    """Start (or reuse) the user's rootless Docker with a Swarm; (url, why not)."""
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "setup-docker-rootless.sh")], capture_output=True, text=True, timeout=180
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["setup failed"])[-1]
    return out.stdout.strip().splitlines()[-1], ""


def engine_version(url: str) -> str:
    import docker

    c = docker.DockerClient(base_url=url, version="1.41")
    try:
        v = c.version()
        names = [x.get("Name", "") for x in v.get("Components") or []]
        kind = "Podman" if any("Podman" in n for n in names) else "Docker"
        return f"{kind} {v.get('Version')}"
    finally:
        c.close()


# -- bundles ------------------------------------------------------------------------------------


def trivial_bundle(
    root: Path, n: int, *, environment: Optional[dict[str, Any]] = None, run: Optional[list[str]] = None
) -> Path:
    """N tasks, one frame number each (an INT task parameter), each running ``echo FRAME`` (or
    ``run``); with ``environment``, as a step environment (the tasks then run in sessions)."""
    root.mkdir(parents=True, exist_ok=True)
    run = run or ["echo", "{{Task.Param.Frame}}"]
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "dispatch",
        "parameterDefinitions": [{"name": "Frames", "type": "STRING", "default": f"1-{n}"}],
        "steps": [
            {
                "name": "run",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"}
                    ]
                },
                "script": {"actions": {"onRun": {"command": run[0], "args": run[1:]}}},
                **({"stepEnvironments": [environment]} if environment else {}),
            }
        ],
    }
    (root / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    (root / "hpcdock.yaml").write_text(yaml.safe_dump({"image": TEST_IMAGE, "max_attempts": 1}))
    return root


def scale_bundle(root: Path, n: int) -> Path:
    """N frames, one per task, with an output pattern (so the store holds N tasks and N frames)."""
    bundle = trivial_bundle(root, n)
    settings = {
        "image": TEST_IMAGE,
        "max_attempts": 1,
        "frames": {"parameter": "Frame", "output": "out/f.{frame:06d}.txt"},
    }
    (bundle / "hpcdock.yaml").write_text(yaml.safe_dump(settings))
    return bundle


# -- dispatch -----------------------------------------------------------------------------------


def baseline(url: str, n: int, conc: int, workdir: Path) -> float:
    """Plain docker-SDK loop: create, start, wait, logs, remove; CONC threads. Tasks per second.

    The containers get what hpcdock asks the engine for (the bundle directory mounted read-only,
    no network, all capabilities dropped, no-new-privileges), so the ratio is hpcdock's own cost.
    """
    import docker
    from docker.types import Mount

    client = docker.DockerClient(base_url=url, version="1.41", timeout=120)
    todo = list(range(1, n + 1))
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            try:
                c = client.containers.create(
                    TEST_IMAGE,
                    entrypoint=["echo"],
                    command=[str(i)],
                    working_dir=str(workdir),
                    mounts=[Mount(target=str(workdir), source=str(workdir), type="bind", read_only=True)],
                    network_mode="none",
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    labels={"hpcdock.bench": "baseline"},
                    detach=True,
                )
                c.start()
                client.api.wait(c.id)
                client.api.logs(c.id, stream=False)
                client.api.remove_container(c.id, force=True)
            except Exception as exc:  # reported below
                errors.append(str(exc))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    client.close()
    if errors:
        raise RuntimeError(f"baseline: {len(errors)} error(s), first: {errors[0]}")
    return n / elapsed


class Service:
    """A real hpcdock-service process for the duration of a ``with``."""

    def __init__(self, root: Path, url: str, slots: int = 2, config: Optional[dict[str, Any]] = None) -> None:
        self.proc = ServiceProcess(root / "svc", url, slots=slots, config=config)

    def __enter__(self) -> ServiceProcess:
        return self.proc.start()

    def __exit__(self, *exc: Any) -> None:
        self.proc.stop()
        try:
            remove_leftovers(self.proc)  # containers of tasks left 'running' (see hpcdock_dispatch)
        except Exception as exc:
            log(f"could not remove leftover containers: {exc}")

    @staticmethod
    def hwm_mb(svc: ServiceProcess) -> float:
        for line in Path(f"/proc/{svc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def hpcdock_dispatch(svc: ServiceProcess, bundle: Path, n: int) -> float:
    """Submit the N-task job; tasks per second from submit to the job's finish (recorded by the service).

    A task that stays 'running' after its container has exited (Podman 4.3's log stream of an
    exited container can fail to end, and the runner waits on it) would hold the job forever: after
    30 s without progress the figure is taken over the tasks that finished, and the run is flagged.
    """
    client = svc.client()
    t0 = time.time()
    job = client.submit(str(bundle))
    last_done, last_change = -1, time.monotonic()
    while job["state"] not in JOB_FINAL:
        if job["tasks_done"] != last_done:
            last_done, last_change = job["tasks_done"], time.monotonic()
        elif time.monotonic() - last_change > 30:
            tasks = client.tasks(job["id"])
            done = [t for t in tasks if t["state"] == "succeeded"]
            stuck = [t["id"] for t in tasks if t["state"] == "running"]
            STUCK.append(
                f"{len(stuck)} of {n} task(s) stuck 'running' after their containers exited "
                f"(tasks {stuck}); rate over the {len(done)} that finished"
            )
            log(STUCK[-1])
            return len(done) / (max(t["finished_at"] for t in done) - t0)
        time.sleep(0.2)
        job = client.job(job["id"])
    if job["state"] != "succeeded" or job["tasks_done"] != n:
        raise RuntimeError(f"hpcdock job ended {job['state']}: {job.get('error')}")
    return n / (job["finished_at"] - t0)


STUCK: list[str] = []


def swarm(url: str, n: int, conc: int, like: Optional[Path] = None) -> float:
    """A replicated-job service of N tasks, at most CONC at once: tasks per second to the last completion.

    ``like``: the tasks get what hpcdock's Swarm engine asks for (that directory bound read-only,
    all capabilities dropped, its isolated network without a virtual IP), so the ratio is
    hpcdock's own cost; without it, a plain ``docker service create --mode replicated-job``.
    """
    import docker
    from docker.types import EndpointSpec, Mount, ServiceMode

    client = docker.DockerClient(base_url=url, version="1.41", timeout=120)
    name = f"hpcdock-bench-{os.getpid()}-{int(time.time())}"
    options: dict[str, Any] = {}
    if like is not None:
        from hpcdock_service.config import SwarmSettings
        from hpcdock_service.engines.swarm import ISOLATED_NETWORK, connect_swarm

        connect_swarm(url, SwarmSettings(), conc).close()  # creates the isolated network once
        options = {
            "mounts": [Mount(target=str(like), source=str(like), type="bind", read_only=True)],
            "workdir": str(like),
            "cap_drop": ["ALL"],
            "networks": [ISOLATED_NETWORK],
            "endpoint_spec": EndpointSpec(mode="dnsrr"),
        }
    t0 = time.time()
    service = client.services.create(
        TEST_IMAGE,
        command=["true"],
        name=name,
        mode=ServiceMode("replicated-job", replicas=n, concurrency=conc),
        **options,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            tasks = service.tasks()
            done = [t for t in tasks if t["Status"]["State"] == "complete"]
            bad = [t for t in tasks if t["Status"]["State"] in ("failed", "rejected")]
            if bad:
                raise RuntimeError(f"swarm task {bad[0]['Status']['State']}: {bad[0]['Status'].get('Err')}")
            if len(done) >= n:
                end = max(_docker_time(t["Status"]["Timestamp"]) for t in done)
                return n / (end - t0)
            time.sleep(0.25)
        raise RuntimeError("swarm job did not finish within 600 s")
    finally:
        service.remove()
        client.close()


def _docker_time(text: str) -> float:
    from datetime import datetime, timezone

    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def measure(
    results: dict[str, Any],
    runs: dict[str, list[float]],
    key: str,
    fn: Callable[[], float],
    *,
    label: str,
    unit: str,
) -> None:
    """Add one run of a figure to ``runs[key]``; one that fails is logged and listed under
    ``errors`` instead, so a failing figure never loses the others."""
    try:
        value = fn()
    except Exception as exc:
        log(f"{label}: FAILED: {exc}")
        results.setdefault("errors", []).append(f"{label}: {exc}")
        return
    runs.setdefault(key, []).append(value)
    log(f"{label}: {value:.2f}{unit}")


def bench_dispatch(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    n, conc = args.tasks, 2
    purl = podman_url()
    durl, why = docker_url() if not args.no_docker else (None, "--no-docker")
    results["engines"] = {
        "podman": engine_version(purl) if purl else None,
        "docker": engine_version(durl) if durl else None,
        "docker_missing": why,
    }
    bundle = trivial_bundle(tmp / "dispatch", n)
    runs: dict[str, list[float]] = {}

    def add(key: str, fn: Callable[[], float]) -> None:
        measure(results, runs, key, fn, label=key, unit=" tasks/s")

    engines = [("podman", purl)] + ([("docker", durl)] if durl else [])
    for kind, url in engines:
        if url is None:
            continue
        for r in range(args.repeat):  # interleaved, so drift hits both alike
            add(f"baseline_{kind}", lambda u=url: baseline(u, n, conc, bundle))
            # a fresh service each run: a stuck task of one run must not hold a slot in the next
            with Service(tmp / f"dispatch-{kind}-{r}", url, slots=conc) as svc:
                add(f"hpcdock_{kind}", lambda s=svc: hpcdock_dispatch(s, bundle, n))
    if durl:
        for r in range(args.repeat):  # plain Swarm and hpcdock on Swarm interleaved, the same tasks
            add("swarm", lambda: swarm(durl, n, conc))
            add("swarm_like", lambda: swarm(durl, n, conc, like=bundle))
            with Service(tmp / f"dispatch-swarm-{r}", durl, slots=conc, config={"engine": "swarm"}) as svc:
                add("hpcdock_swarm", lambda s=svc: hpcdock_dispatch(s, bundle, n))
    results["dispatch"] = {
        "tasks": n,
        "concurrency": conc,
        "runs": runs,
        "stuck": list(STUCK),
        "median": {k: statistics.median(v) for k, v in runs.items()},
    }


# -- Slurm --------------------------------------------------------------------------------------


def slurm_plain(bundle: Path, n: int, array: bool) -> float:
    """N jobs of plain ``sbatch`` (a loop of N submissions, or one ``--array`` of N), each running
    ``podman run --rm`` of the task with hpcdock's security flags; tasks/s from the first submit
    to the moment ``squeue`` lists none of them (polled every 50 ms)."""
    name = f"bench-plain-{os.getpid()}-{int(time.time())}"
    flags = "--network none --cap-drop ALL --security-opt no-new-privileges"
    run = f"podman run --rm {flags} -v {bundle}:{bundle}:ro -w {bundle} {TEST_IMAGE} echo"
    common = ["sbatch", "--parsable", f"--job-name={name}", "--output=/dev/null", f"--chdir={bundle}"]
    t0 = time.time()
    if array:
        subprocess.run(
            [*common, f"--array=1-{n}", f"--wrap={run} $SLURM_ARRAY_TASK_ID"], check=True, capture_output=True
        )
    else:
        for i in range(1, n + 1):
            subprocess.run([*common, f"--wrap={run} {i}"], check=True, capture_output=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        left = subprocess.run(
            ["squeue", "--noheader", f"--name={name}", "--format=%i"], capture_output=True, text=True
        )
        if left.returncode == 0 and not left.stdout.strip():
            return n / (time.time() - t0)
        time.sleep(0.05)
    raise RuntimeError(f"plain sbatch jobs {name} did not finish within 900 s")


def slurm_service(root: Path, n: int) -> ServiceProcess:
    """A real hpcdock-service with ``engine: slurm``, up to N jobs in Slurm's queue (and N sessions)."""
    config = {"engine": "slurm", "slurm": {"max_jobs": n, "spool_dir": str(root / "spool")}}
    return ServiceProcess(root / "svc", None, slots=n, config=config).start()


def bench_slurm(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """hpcdock with ``engine: slurm`` against plain sbatch (loop and array) on the same N tasks,
    interleaved; the same tasks in warm sessions (two jobs, as many as the node's CPUs, the tasks
    handed over through each session's control file); frames per task (the same frames as tasks
    of 1, 10 and 25 frames)."""
    if shutil.which("sbatch") is None:
        raise RuntimeError("Slurm is not installed (make bench runs scripts/setup-slurm.sh as root)")
    n = args.tasks
    bundle = trivial_bundle(tmp / "slurm-dispatch", n)
    warm = trivial_bundle(tmp / "slurm-warm", n, environment=WARM_ENV)
    runs: dict[str, list[float]] = {}
    warm_own: list[float] = []

    def in_sessions(svc: ServiceProcess) -> float:
        wall, own = job_wall(svc, warm)
        warm_own.extend(own)
        return n / wall

    def add(key: str, fn: Callable[[], float]) -> None:
        measure(results, runs, key, fn, label=f"slurm {key}", unit="/s")

    for r in range(args.repeat):
        add("sbatch_loop", lambda: slurm_plain(bundle, n, array=False))
        add("sbatch_array", lambda: slurm_plain(bundle, n, array=True))
        svc = slurm_service(tmp / f"slurm-{r}", n)
        try:
            add("hpcdock", lambda s=svc: hpcdock_dispatch(s, bundle, n))
        finally:
            svc.stop()
        svc = slurm_service(tmp / f"slurm-warm-{r}", 2)
        try:
            add("hpcdock_sessions", lambda s=svc: in_sessions(s))
        finally:
            svc.stop()
    frames = {}
    svc = slurm_service(tmp / "slurm-frames", n)
    try:
        for per_task in (1, 10, 25):
            chunked = make_bundle(tmp / f"slurm-frames-{per_task}", frames=f"1-{n}", chunk=per_task)
            (chunked / "hpcdock.yaml").write_text(
                (chunked / "hpcdock.yaml").read_text() + "max_attempts: 1\n"
            )
            client = svc.client()
            t0 = time.time()
            job = wait_job(client, client.submit(str(chunked))["id"], timeout=900)
            if job["state"] != "succeeded":
                raise RuntimeError(f"frames per task {per_task}: job {job['state']}: {job.get('error')}")
            frames[per_task] = {"tasks": job["tasks_total"], "frames_per_s": n / (job["finished_at"] - t0)}
            log(f"slurm frames per task {per_task}: {frames[per_task]['frames_per_s']:.2f} frames/s")
    finally:
        svc.stop()
    results["slurm"] = {
        "tasks": n,
        "version": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip(),
        "cpus": subprocess.run(
            ["sinfo", "--noheader", "--format=%C"], capture_output=True, text=True
        ).stdout.strip(),
        "runs": runs,
        "median": {k: statistics.median(v) for k, v in runs.items()},
        "warm_task_p50_s": statistics.median(warm_own) if warm_own else None,
        "frames": frames,
    }


# -- warm sessions ------------------------------------------------------------------------------

WARM_ENV = {
    "name": "warm",
    "script": {"actions": {"onEnter": {"command": "true"}, "onExit": {"command": "true"}}},
}
RENDERER_START, RENDERER_FRAME, RENDERER_FRAMES = 3.0, 0.2, 48


def job_wall(svc: ServiceProcess, bundle: Path) -> tuple[float, list[float]]:
    """Seconds from submit to the job's end, and each task's own seconds (started -> finished)."""
    client = svc.client()
    t0 = time.time()
    job = wait_job(client, client.submit(str(bundle))["id"], timeout=900)
    if job["state"] != "succeeded":
        raise RuntimeError(f"job ended {job['state']}: {job.get('error')}")
    return job["finished_at"] - t0, [t["finished_at"] - t["started_at"] for t in client.tasks(job["id"])]


def exec_overhead(url: str, calls: int = 30) -> float:
    """Median seconds of one engine ``exec`` of ``true`` in a running container (create + start + inspect)."""
    import docker

    client = docker.DockerClient(base_url=url, version="1.41", timeout=120)
    c = client.containers.run(TEST_IMAGE, ["sleep", "600"], detach=True, network_mode="none")
    try:
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            ex = client.api.exec_create(c.id, ["true"])
            client.api.exec_start(ex["Id"])
            client.api.exec_inspect(ex["Id"])
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        c.remove(force=True)
        client.close()


def bench_sessions(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Warm sessions against cold containers, same run, interleaved: trivial tasks' rate, each warm
    task's own time (the session's per-task overhead) against an engine exec, and a renderer that
    takes RENDERER_START seconds to start (paid once per session warm, once per task cold)."""
    url = podman_url()
    if url is None:
        raise RuntimeError("no rootless Podman")
    n, conc = args.tasks, 2
    cold = trivial_bundle(tmp / "cold", n)
    warm = trivial_bundle(tmp / "warm", n, environment=WARM_ENV)
    runs: dict[str, list[float]] = {}
    per_task: list[float] = []
    for r in range(args.repeat):
        with Service(tmp / f"sessions-{r}", url, slots=conc) as svc:
            runs.setdefault("cold", []).append(hpcdock_dispatch(svc, cold, n))
            wall, own = job_wall(svc, warm)
            runs.setdefault("warm", []).append(n / wall)
            per_task += own
            log(f"sessions run {r}: cold {runs['cold'][-1]:.2f}, warm {runs['warm'][-1]:.2f} tasks/s")
    exec_s = exec_overhead(url)
    frames = RENDERER_FRAMES
    start_then = f"sleep {RENDERER_START:g} && sleep {RENDERER_FRAME:g}"
    renderer_cold = trivial_bundle(tmp / "rcold", frames, run=["sh", "-c", start_then])
    renderer_env = {
        "name": "renderer",
        "script": {"actions": {"onEnter": {"command": "sleep", "args": [f"{RENDERER_START:g}"]}}},
    }
    renderer_warm = trivial_bundle(
        tmp / "rwarm", frames, environment=renderer_env, run=["sleep", f"{RENDERER_FRAME:g}"]
    )
    with Service(tmp / "renderer", url, slots=conc) as svc:
        warm_wall, _ = job_wall(svc, renderer_warm)
        cold_wall, _ = job_wall(svc, renderer_cold)
    results["sessions"] = {
        "tasks": n,
        "concurrency": conc,
        "runs": runs,
        "median": {k: statistics.median(v) for k, v in runs.items()},
        "warm_task_p50_s": statistics.median(per_task),
        "exec_p50_s": exec_s,
        "renderer": {
            "frames": frames,
            "start_s": RENDERER_START,
            "frame_s": RENDERER_FRAME,
            "warm_wall_s": warm_wall,
            "cold_wall_s": cold_wall,
            "ideal_s": conc * RENDERER_START + frames * RENDERER_FRAME / conc,
        },
    }


# -- submission scale ---------------------------------------------------------------------------


def bench_scale(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    purl = podman_url()
    rows = []
    for n in args.sizes:
        bundle = scale_bundle(tmp / f"scale-{n}", n)
        with Service(tmp / f"scale-svc-{n}", purl, slots=2) as svc:
            client = svc.client()
            client.timeout = 600
            rss0 = Service.hwm_mb(svc)
            t0 = time.perf_counter()
            job = client.submit(str(bundle))
            accept = time.perf_counter() - t0
            t0 = time.perf_counter()
            tasks = client.tasks(job["id"])
            listing = time.perf_counter() - t0
            t0 = time.perf_counter()
            frames = client._json("GET", f"/v1/jobs/{job['id']}/frames")["frames"]
            frames_s = time.perf_counter() - t0
            rss = Service.hwm_mb(svc)
            t0 = time.perf_counter()
            client.cancel(job["id"])
            cancel = time.perf_counter() - t0
            assert len(tasks) == n and len(frames) == n, (len(tasks), len(frames))
            row = {
                "frames": n,
                "accept_s": accept,
                "list_tasks_s": listing,
                "list_frames_s": frames_s,
                "cancel_s": cancel,
                "rss_idle_mb": rss0,
                "rss_peak_mb": rss,
                "peak_after_cancel_mb": Service.hwm_mb(svc),
            }
            log(f"scale {n}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()))
            rows.append(row)
    results["scale"] = rows


# -- event latency ------------------------------------------------------------------------------


def latency_once(tmp: Path, url: str, n: int, interval: float) -> dict[str, float]:
    # PNG frames, as a renderer writes: the service watches image outputs on disk.
    # The service's own directories beside the bundle, not inside it: a bundle holding them is refused.
    bundle = make_bundle(
        tmp / "bundle", frames=f"1-{n}", chunk=(n + 1) // 2, env={"FRAME_SLEEP": str(interval)}, png=True
    )
    with Service(tmp / "svc", url, slots=2) as svc:
        client = svc.client()
        received: dict[int, float] = {}
        outputs: dict[int, str] = {}
        job = client.submit(str(bundle))

        def follow() -> None:
            for ev in client.events(job=job["id"]):
                now = time.time()
                if ev.kind == "frame" and ev.data["frame"]["state"] == "done":
                    f = ev.data["frame"]
                    received.setdefault(f["frame"], now)
                    outputs[f["frame"]] = f["output"]
                elif ev.kind == "job" and ev.data["job"]["state"] in JOB_FINAL:
                    return

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        follower.join(timeout=60 + 2 * n * interval)
        if follower.is_alive():  # a task stuck after its container exited: keep the frames that arrived
            log(f"latency: job {job['id']} did not finish; {len(received)} of {n} frames arrived")
    lat = sorted((received[f] - os.stat(outputs[f]).st_mtime_ns / 1e9) * 1000 for f in received)
    if not lat:
        raise RuntimeError("no frame events arrived")
    pct = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]  # noqa: E731
    return {
        "frames": len(lat),
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "max_ms": lat[-1],
        "min_ms": lat[0],
        "interval_s": interval,
    }


def bench_latency(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """From a frame's output file being written (its mtime) to the client receiving its done event.

    The test renderer writes each frame, then prints hpcdock's frame-done marker; the service
    reads it from the container's log stream, checks the file and appends the event.
    """
    engines = [("podman", podman_url())]
    if not args.no_docker:
        engines.append(("docker", docker_url()[0]))
    rows = {}
    for kind, url in engines:
        if url is None:
            continue
        try:
            row = latency_once(tmp / f"latency-{kind}", url, args.latency_frames, args.frame_interval)
        except Exception as exc:
            log(f"latency {kind}: FAILED: {exc}")
            results.setdefault("errors", []).append(f"latency {kind}: {exc}")
            continue
        log(f"latency {kind}: " + ", ".join(f"{k}={v:.1f}" for k, v in row.items()))
        rows[kind] = row
    results["latency"] = rows


# -- panel --------------------------------------------------------------------------------------


def bench_panel(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    script = REPO / "bench" / "bench_panel.py"
    if not script.exists():
        results["panel"] = {"skipped": "bench/bench_panel.py is missing"}
        return
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(
        [sys.executable, str(script), "--repeat", str(args.panel_repeat)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    results["panel"] = {
        "rc": out.returncode,
        "text": out.stdout.strip(),
        "stderr": out.stderr.strip()[-2000:],
    }


# -- frame checks -------------------------------------------------------------------------------

CHECK_IMAGES = (("PNG 640x360", 640, 360, "png"), ("EXR 2048x1080 RGBA half", 2048, 1080, "exr"))


def check_image(path: Path, width: int, height: int) -> Path:
    """A frame with a render's texture (gradient, a shape, grain): flat images decode unrealistically fast."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = 0.3 + 0.4 * y / height + 0.3 * (((x - width / 2) ** 2 + (y - height / 2) ** 2) < (height / 4) ** 2)
    grey = grey + np.random.default_rng(7).normal(0, 0.02, grey.shape).astype(np.float32)
    rgb = np.clip(np.stack([grey, grey * 0.9, grey * 0.7], axis=2), 0, 1)
    if path.suffix == ".png":
        from PIL import Image

        Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB").save(path)
        return path
    import OpenImageIO as oiio

    rgba = np.concatenate([rgb, np.ones((height, width, 1), np.float32)], axis=2)
    out = oiio.ImageOutput.create(str(path))
    out.open(str(path), oiio.ImageSpec(width, height, 4, "half"))
    out.write_image(rgba)
    out.close()
    return path


def bench_checks(tmp: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """What checking a frame adds to making its thumbnail, which decodes the frame for both.

    The checks run inside the thumbnail's decode (framecheck.Probe), so their cost is timed there,
    call by call, and set against the rest of that thumbnail's time: a difference of two separately
    timed thumbnails drowns in the noise of a shared machine. Then the store's part (recording the
    flags and judging size, channels and flicker in the frame's transaction) against recording the
    frame without them, in a 200-frame job.
    """
    from hpcdock_service import framecheck, thumbnails

    class TimedProbe(framecheck.Probe):
        spent = 0.0

        def display_image(self, *a: Any, **k: Any) -> None:
            self._timed(super().display_image, a, k)

        def float_pixels(self, *a: Any, **k: Any) -> None:
            self._timed(super().float_pixels, a, k)

        def thumbnail_image(self, *a: Any, **k: Any) -> None:
            self._timed(super().thumbnail_image, a, k)

        def _timed(self, fn: Callable[..., None], a: Any, k: Any) -> None:
            t0 = time.perf_counter()
            fn(*a, **k)
            self.spent += time.perf_counter() - t0

    settings = framecheck.FrameCheckSettings()
    rows = []
    for label, width, height, ext in CHECK_IMAGES:
        src = check_image(tmp / f"check.{ext}", width, height)
        checks, rest = [], []
        for i in range(args.check_repeat + 1):
            probe = TimedProbe(settings)
            t0 = time.perf_counter()
            thumbnails.make_thumbnail(src, tmp / "thumb.png", probe=probe)
            total = time.perf_counter() - t0
            assert probe.check.flags == [], probe.check.flags  # a clean frame: every check runs to its end
            if i:  # the first round warms caches and imports
                checks.append(probe.spent)
                rest.append(total - probe.spent)
        c, r = statistics.median(checks), statistics.median(rest)
        rows.append({"image": label, "thumbnail_ms": r * 1000, "checks_ms": c * 1000, "share": c / r})
    results["checks"] = {"images": rows, "store": store_check_cost(tmp)}


def store_check_cost(tmp: Path) -> dict[str, float]:
    from hpcdock_service import framecheck
    from hpcdock_service.bundle_loader import load_bundle
    from hpcdock_service.mounts import MountPolicy
    from hpcdock_service.store import Store

    frames = 200
    bundle = make_bundle(tmp / "checks-bundle", frames=f"1-{frames}", chunk=1, png=True)
    store = Store(tmp / "checks.db")
    try:
        plan = load_bundle(str(bundle), mount_policy=MountPolicy.build([str(tmp)]))
        jobs = [store.create_job(plan).id for _ in range(2)]
        for job in jobs:
            for t in store.tasks(job):
                store.start_task(t.id, f"c{t.id}", [], 0)
        check = framecheck.FrameCheck(width=640, height=360, channels=("R", "G", "B"))
        plain, checked = [], []
        for f in range(1, frames + 1):
            check.luma = 0.5 + 0.001 * f
            t0 = time.perf_counter()
            store.set_frame(jobs[0], 0, f, "done")
            t1 = time.perf_counter()
            store.set_frame(jobs[1], 0, f, "done", check=check)
            t2 = time.perf_counter()
            plain.append(t1 - t0)
            checked.append(t2 - t1)
        assert store.read_job(jobs[1]).frames_flagged == 0
    finally:
        store.close()
    return {
        "frames": frames,
        "record_ms": statistics.median(plain) * 1000,
        "record_checked_ms": statistics.median(checked) * 1000,
    }


# -- report -------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    def first(path: str, default: str = "?") -> str:
        try:
            return Path(path).read_text().strip().splitlines()[0]
        except OSError:
            return default

    mem = first("/proc/meminfo")
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    return {
        "os": f"Debian {first('/etc/debian_version')}",
        "kernel": platform.release(),
        "cpus": f"{os.cpu_count()} x {cpu}",
        "memory": f"{int(mem.split()[1]) / 1024 / 1024:.0f} GiB",
        "python": platform.python_version(),
        "load_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def report_sessions(w: dict[str, Any]) -> list[str]:
    med, rend = w["median"], w["renderer"]
    rate = med["warm"] / med["cold"]

    def runs(key: str) -> str:
        return ", ".join(f"{v:.2f}" for v in w["runs"][key])

    within = rend["warm_wall_s"] / rend["ideal_s"]
    return [
        f"### Warm sessions: {w['tasks']} trivial tasks, {w['concurrency']} at a time (rootless Podman)",
        "",
        "| what | figure | runs | target |",
        "| --- | ---: | --- | --- |",
        f"| cold containers | {med['cold']:.2f} tasks/s | {runs('cold')} | |",
        f"| warm sessions | {med['warm']:.2f} tasks/s ({rate:.1f}x cold) | {runs('warm')} | >= 4x: {ok(rate >= 4)} |",
        f"| a warm task's own time, p50 (start to recorded end) | {w['warm_task_p50_s'] * 1000:.0f} ms | |"
        f" <= 50 ms: {ok(w['warm_task_p50_s'] <= 0.05)} |",
        f"| engine `exec` of `true` in a running container, p50 | {w['exec_p50_s'] * 1000:.0f} ms | | |",
        f"| {rend['frames']} one-frame tasks, renderer start {rend['start_s']:g} s + {rend['frame_s']:g} s/frame: warm |"
        f" {rend['warm_wall_s']:.1f} s ({within:.2f}x ideal {rend['ideal_s']:.1f} s) | | <= 1.5x: {ok(within <= 1.5)} |",
        f"| same, cold | {rend['cold_wall_s']:.1f} s | | |",
        "",
    ]


def report(results: dict[str, Any]) -> str:
    lines = []
    m = results["machine"]
    eng = results.get("engines", {})
    lines += [
        f"Machine: {m['cpus']}, {m['memory']}, {m['os']}, kernel {m['kernel']}, Python {m['python']}; "
        f"engines: {eng.get('podman') or '-'} (rootless), {eng.get('docker') or '-'} (rootless); "
        f"load average at the end {m['load_at_end']}.",
        "",
    ]
    d = results.get("dispatch")
    if d:
        med = d["median"]
        lines += [
            f"### Dispatch: {d['tasks']} trivial tasks, {d['concurrency']} at a time",
            "",
            "| what | tasks/s (median) | runs | ratio | target |",
            "| --- | ---: | --- | ---: | --- |",
        ]

        def runs(key: str) -> str:
            return ", ".join(f"{v:.2f}" for v in d["runs"].get(key, []))

        for kind, label in (("podman", "rootless Podman"), ("docker", "rootless Docker")):
            b, h = med.get(f"baseline_{kind}"), med.get(f"hpcdock_{kind}")
            if b:
                lines.append(
                    f"| baseline: docker SDK loop, {label} | {b:.2f} | {runs('baseline_' + kind)} | | |"
                )
            if h:
                ratio = f"{h / b:.2f}x baseline" if b else ""
                target = f"0.9x: {ok(h / b >= TARGETS['baseline'])}" if b else ""
                lines.append(
                    f"| hpcdock job, {label} | {h:.2f} | {runs('hpcdock_' + kind)} | {ratio} | {target} |"
                )
        s = med.get("swarm")
        if s:
            lines.append(f"| Docker Swarm replicated-job, rootless Docker | {s:.2f} | {runs('swarm')} | | |")
            like, h = med.get("swarm_like"), med.get("hpcdock_swarm")
            if like:
                lines.append(
                    f"| the same job with hpcdock's spec (read-only bind, no capabilities, isolated "
                    f"network) | {like:.2f} | {runs('swarm_like')} | | |"
                )
            if h:
                versus = f"{h / like:.2f}x the same job; " if like else ""
                target = f"0.9x: {ok(h / like >= TARGETS['swarm_engine'])}" if like else ""
                lines.append(
                    f"| hpcdock job, engine: swarm (a replicated-job service per task) | {h:.2f} | "
                    f"{runs('hpcdock_swarm')} | {versus}{h / s:.2f}x plain Swarm | {target} |"
                )
            for kind in ("podman", "docker"):
                h = med.get(f"hpcdock_{kind}")
                if h:
                    lines.append(
                        f"| hpcdock ({kind}) / Swarm | | | {h / s:.2f}x | 2x: {ok(h / s >= TARGETS['swarm'])} |"
                    )
        for note in d.get("stuck") or []:
            lines.append(f"\nNote: a run had {note}.")
        lines.append("")
    sc = results.get("scale")
    if sc:
        lines += [
            "### Submission scale (one frame per task; rootless Podman)",
            "",
            "| frames | accept (POST /v1/jobs) | list tasks | list frames | cancel | service peak RSS | target |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in sc:
            target = ""
            if r["frames"] >= 100_000:
                target = (
                    f"accept <= 1 s: {ok(r['accept_s'] <= TARGETS['accept_s'])}; "
                    f"<= 300 MB: {ok(r['rss_peak_mb'] <= TARGETS['rss_mb'])}"
                )
            lines.append(
                f"| {r['frames']:,} | {r['accept_s']:.2f} s | {r['list_tasks_s']:.2f} s | "
                f"{r['list_frames_s']:.2f} s | {r['cancel_s']:.2f} s | {r['rss_peak_mb']:.0f} MB "
                f"(idle {r['rss_idle_mb']:.0f}) | {target} |"
            )
        lines.append("")
    la = results.get("latency")
    if la:
        lines += [
            "### Event latency: frame output written -> its `done` event at a client",
            "",
            "| engine | frames | p50 | p95 | min | max | target |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for kind, r in la.items():
            lines.append(
                f"| rootless {kind} | {r['frames']} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | "
                f"{r['min_ms']:.0f} ms | {r['max_ms']:.0f} ms | "
                f"p95 <= 200 ms: {ok(r['p95_ms'] <= TARGETS['p95_ms'])} |"
            )
        lines.append("")
    ch = results.get("checks")
    if ch:
        lines += [
            "### Frame checks: their cost on top of the thumbnail (same decode; medians)",
            "",
            "| image | thumbnail (decode, tone map, resize, write) | the checks | share of the thumbnail | goal |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for r in ch["images"]:
            goal = (
                f"< 20 ms: {ok(r['checks_ms'] < 20)}"
                if r["image"].startswith("PNG")
                else f"< 10%: {ok(r['share'] < 0.10)}"
            )
            lines.append(
                f"| {r['image']} | {r['thumbnail_ms']:.1f} ms | {r['checks_ms']:.2f} ms | "
                f"{100 * r['share']:.1f}% | {goal} |"
            )
        st = ch["store"]
        lines += [
            "",
            f"Recording a done frame in the store: {st['record_ms']:.2f} ms; with its flags judged "
            f"(size, channels, flicker of the frames around it): {st['record_checked_ms']:.2f} ms "
            f"(median of {st['frames']} frames).",
            "",
        ]
    sl = results.get("slurm")
    if sl:
        med = sl["median"]
        lines += [
            f"### Slurm: {sl['tasks']} trivial tasks on {sl['version']} (CPUs allocated/idle/other/total {sl['cpus']})",
            "",
            "| what | tasks/s (median) | runs | ratio | target |",
            "| --- | ---: | --- | ---: | --- |",
        ]
        for key, label in (
            ("sbatch_loop", "plain sbatch loop, one `podman run --rm` job per task"),
            ("sbatch_array", "plain `sbatch --array`, one array task per task"),
        ):
            if med.get(key):
                lines.append(
                    f"| {label} | {med[key]:.2f} | {', '.join(f'{v:.2f}' for v in sl['runs'][key])} | | |"
                )
        best = max((med.get("sbatch_loop") or 0, med.get("sbatch_array") or 0))
        h = med.get("hpcdock")
        if h:
            ratio = f"{h / best:.2f}x the better" if best else ""
            target = f"0.9x: {ok(h / best >= TARGETS['baseline'])}" if best else ""
            lines.append(
                f"| hpcdock job, `engine: slurm` | {h:.2f} | {', '.join(f'{v:.2f}' for v in sl['runs']['hpcdock'])} "
                f"| {ratio} | {target} |"
            )
        warm = med.get("hpcdock_sessions")
        if warm:
            ratio = f"{warm / h:.1f}x the cold job" if h else ""
            lines.append(
                f"| same tasks in warm sessions, two session jobs | {warm:.2f} | "
                f"{', '.join(f'{v:.2f}' for v in sl['runs']['hpcdock_sessions'])} | {ratio} | |"
            )
            lines.append(
                f"| a warm task's own time, p50 (start to recorded end) | {sl['warm_task_p50_s'] * 1000:.0f} ms | | | |"
            )
        if sl.get("frames"):
            lines += ["", "| frames per task | tasks | frames/s |", "| ---: | ---: | ---: |"]
            for per_task, row in sorted(sl["frames"].items()):
                lines.append(f"| {per_task} | {row['tasks']} | {row['frames_per_s']:.2f} |")
        lines.append("")
    p = results.get("panel")
    if p:
        lines += [p.get("text") or f"Panel benchmark: {p}", ""]
    if results.get("sessions"):
        lines += report_sessions(results["sessions"])
    if results.get("errors"):
        lines += ["Errors:", *[f"- {e}" for e in results["errors"]], ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="dispatch,scale,latency,panel,checks,slurm,sessions")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each dispatch figure (median shown)")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--latency-frames", type=int, default=120)
    parser.add_argument("--frame-interval", type=float, default=0.1, help="seconds between a task's frames")
    parser.add_argument("--panel-repeat", type=int, default=3)
    parser.add_argument("--check-repeat", type=int, default=15, help="rounds of each frame-check figure")
    parser.add_argument("--no-docker", action="store_true", help="skip rootless Docker and Swarm")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    parts = {
        "dispatch": bench_dispatch,
        "scale": bench_scale,
        "latency": bench_latency,
        "panel": bench_panel,
        "checks": bench_checks,
        "sessions": bench_sessions,
        "slurm": bench_slurm,
    }
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="hpcdock-bench-") as tmp:
        for name in args.only.split(","):
            log(f"{name} ...")
            try:
                parts[name](Path(tmp), args, results)
            except Exception as exc:
                log(f"{name}: FAILED: {exc}")
                results.setdefault("errors", []).append(f"{name}: {exc}")
    results["machine"] = machine()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
