"""``hpcdock-service``: the daemon, run as the artist's own user (never root)."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Optional

from hpcdock.endpoint import LOOPBACK_NAMES, Endpoint, private_dir_problem

from .config import config_path, load_config
from .engines.base import EngineError
from .errors import BadInput

log = logging.getLogger("hpcdock_service")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hpcdock-service", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help=f"config file (default {config_path()})")
    p.add_argument(
        "--listen",
        metavar="URL",
        help="unix:///path/to/socket or tcp://host:port (default: a private Unix socket, "
        "$XDG_RUNTIME_DIR/hpcdock/service.sock)",
    )
    p.add_argument("--host", help="listen on TCP at this address instead (port 7654 unless --port)")
    p.add_argument("--port", type=int, help="listen on TCP at this port instead (on 127.0.0.1 unless --host)")
    p.add_argument("--slots", type=int, help="tasks run at once (default: the machine's cores)")
    p.add_argument("--state-dir", help="where the store, logs and thumbnails live")
    p.add_argument("--engine-socket", help="engine API socket, e.g. unix:///run/user/1000/podman/podman.sock")
    p.add_argument(
        "--reset-store",
        action="store_true",
        help="if the store is corrupted, keep it as hpcdock.db.corrupt-TIME and start an empty one "
        "(a healthy store is left alone)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="print what the service would use (engine, GPUs, config) and exit",
    )
    p.add_argument(
        "--install-user-unit",
        action="store_true",
        help="write a systemd --user unit that starts the service at login, print how to enable it, and exit",
    )
    p.add_argument(
        "--openapi",
        action="store_true",
        help="print the API's OpenAPI document (the contract committed as docs/openapi.json) and exit; "
        "needs no engine, state or token",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.openapi:
        from .api import openapi_text, schema_app

        sys.stdout.write(openapi_text(schema_app(token="").openapi()))
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.geteuid() == 0 and not os.environ.get("HPCDOCK_ALLOW_ROOT"):
        print(
            "hpcdock-service: refusing to run as root; run it as your own user "
            "(the engine it drives must be rootless)",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(
            args.config,
            {
                "listen": args.listen,
                "host": args.host,
                "port": args.port,
                "slots": args.slots,
                "state_dir": args.state_dir,
                "engine_socket": args.engine_socket,
            },
        )
    except BadInput as exc:
        print(f"hpcdock-service: {exc}", file=sys.stderr)
        return 2

    if args.install_user_unit:
        return install_user_unit(args)

    from .service import Service, StateDirInUse  # heavy imports after argument errors are reported
    from .store import StoreUnusable

    try:
        service = Service(config, reset_store=args.reset_store)
    except (EngineError, StateDirInUse, StoreUnusable) as exc:
        print(f"hpcdock-service: {exc}", file=sys.stderr)
        return 1
    if args.check:
        report = {
            **service.health(),
            "endpoint": config.endpoint.url,
            "gpu_inventory": service.engine.gpus.inventory_json(),
            "task_limits": limits_report(service),
            "resources": resources_report(service),
            "workers": service.workers.to_json(),  # what host requirements are judged against
            "mounts": service.mount_policy.to_json(),
            "config": vars(config),
        }
        print(json.dumps(report, indent=2, default=str))
        service.close()
        return 0
    try:
        listener = listen(config.endpoint)
    except ListenError as exc:
        service.close()
        print(f"hpcdock-service: {exc}", file=sys.stderr)
        return 1
    return serve(service, listener)


def limits_report(service) -> dict[str, Any]:
    """The limits a task container gets when its step asks for none, and how the engine holds it to them."""
    config = service.config
    return {
        "defaults": {
            "pids": config.task_pids,
            "memory_mib": config.task_memory_mib,
            "vcpus": config.task_vcpus,
        },
        "log_cap_mib": config.log_cap_mib,
        "enforced_by": service.engine.describe().get("limits"),
    }


def resources_report(service) -> dict[str, Any]:
    """What the scheduler counts and packs, and how licence failures are retried."""
    config = service.config
    machine = config.packing_machine
    return {
        "counted": {
            name: {"total": count, "step_amount": f"amount.{name}"}
            for name, count in sorted(config.resources.items())
        },
        "packing": {
            "vcpus": machine.vcpus,
            "memory_mib": machine.memory_mib,
            "source": "this machine (os.cpu_count, physical memory)"
            if machine.detected
            else "machine in service.yaml",
            "rule": "a task starts only while the amount.worker.vcpu and amount.worker.memory (min, else max) of "
            "running tasks fit; a step that declares none is bounded by the slots alone. The scheduler "
            "packs whatever the engine enforces; which container limits hold is task_limits.enforced_by",
        },
        "licence_retry": {
            "backoff_s": config.licence_backoff_s,
            "backoff_max_s": config.licence_backoff_max_s,
            "retries": config.licence_retries,
        },
    }


class ListenError(Exception):
    """The endpoint cannot be served; the message says why and what to do."""


def listen(ep: Endpoint) -> socket.socket:
    """Bind the endpoint before anything is recovered or started, so a taken address ends the
    start cleanly; binding here rather than in uvicorn also keeps a live socket of another
    service from being unlinked and the socket file private (0600) from the first instant."""
    if ep.is_unix:
        return _listen_unix(Path(str(ep.path)))
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {ep.url}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # only past a closed socket's TIME_WAIT
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        hint = (
            " (another program, perhaps another user's hpcdock-service, holds it; the default, "
            "a private Unix socket per user, never collides)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ListenError(f"cannot listen on {ep.url}: {exc.strerror}{hint}") from None
    if ep.host not in LOOPBACK_NAMES:
        log.warning("listening on %s: anyone who can reach it and holds the token can run containers", ep.url)
    sock.listen(128)
    return sock


def _listen_unix(path: Path) -> socket.socket:
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ListenError(f"cannot create {directory}: {exc.strerror}") from None
    problem = private_dir_problem(directory)
    if problem is not None:
        raise ListenError(f"cannot listen on unix://{path}: {problem}; its clients would refuse it")
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # left by a service that was killed
        except OSError as exc:
            raise ListenError(f"cannot listen on unix://{path}: {exc.strerror}") from None
        else:
            raise ListenError(f"another hpcdock-service already listens on unix://{path}")
        finally:
            probe.close()
    elif path.exists() or path.is_symlink():
        raise ListenError(f"cannot listen on unix://{path}: something that is not a socket is there")
    if len(os.fsencode(str(path))) >= 108:
        raise ListenError(
            f"cannot listen on unix://{path}: the path is longer than a Unix socket allows "
            "(107 bytes); choose a shorter one"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on unix://{path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def serve(service, listener: socket.socket) -> int:
    import uvicorn

    from .api import create_app

    ep = service.config.endpoint
    # The app's lifespan starts the scheduler and closes the service (and an embedded engine)
    # on shutdown: uvicorn re-raises SIGTERM after its shutdown, so code after run() never runs.
    app = create_app(service, manage_lifecycle=True)
    socket_file = os.stat(ep.path) if ep.is_unix else None

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
            app.state.api.close_streams()  # event streams would otherwise hold the shutdown up
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
            await super().shutdown(sockets)
            if socket_file is not None:
                _remove_socket_file(str(ep.path), socket_file)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    log.info(
        "hpcdock-service %s on %s (engine %s)", service.health()["version"], ep.url, service.engine.describe()
    )
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.run(sockets=[listener])
    return 0


def _remove_socket_file(path: str, ours: os.stat_result) -> None:
    """Remove the socket file unless another service has replaced it meanwhile."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
            os.unlink(path)
    except OSError:
        pass


UNIT = """\
[Unit]
Description=hpcdock-service: runs Houdini render jobs as rootless containers

[Service]
ExecStart={exe}
Restart=on-failure
# Only the service gets SIGTERM: it stops dispatching and its embedded Podman; the containers
# of running tasks (their conmon processes live in this unit) keep running and are re-adopted
# by the next start.
KillMode=process
TimeoutStopSec=30

[Install]
WantedBy=default.target
"""


def install_user_unit(args: argparse.Namespace) -> int:
    """Write ``~/.config/systemd/user/hpcdock-service.service`` (for machines with systemd)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    unit = Path(base) / "systemd" / "user" / "hpcdock-service.service"
    exe = shutil.which("hpcdock-service", path=str(Path(sys.executable).parent)) or shutil.which(
        "hpcdock-service"
    )
    command = [exe] if exe else [sys.executable, "-m", "hpcdock_service.main"]
    if args.config:
        command += ["--config", str(args.config.resolve())]
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(UNIT.format(exe=" ".join(shlex.quote(c) for c in command)))
    print(
        f"wrote {unit}\nenable and start it with:\n"
        "    systemctl --user daemon-reload && systemctl --user enable --now hpcdock-service\n"
        "(to keep it running after you log out: loginctl enable-linger)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
