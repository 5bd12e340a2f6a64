"""``hpcdock-service``: the daemon, run as the artist's own user (never root)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

from .config import config_path, load_config
from .engines.base import EngineError
from .errors import BadInput

log = logging.getLogger("hpcdock_service")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hpcdock-service", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help=f"config file (default {config_path()})")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 7654)")
    p.add_argument("--slots", type=int, help="tasks run at once (default: the machine's cores)")
    p.add_argument("--state-dir", help="where the store, logs and thumbnails live")
    p.add_argument("--engine-socket", help="engine API socket, e.g. unix:///run/user/1000/podman/podman.sock")
    p.add_argument("--check", action="store_true",
                   help="print what the service would use (engine, GPUs, config) and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() == 0 and not os.environ.get("HPCDOCK_ALLOW_ROOT"):
        print("hpcdock-service: refusing to run as root; run it as your own user "
              "(the engine it drives must be rootless)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, {"host": args.host, "port": args.port, "slots": args.slots,
                                           "state_dir": args.state_dir, "engine_socket": args.engine_socket})
    except BadInput as exc:
        print(f"hpcdock-service: {exc}", file=sys.stderr)
        return 2

    from .service import Service  # heavy imports after argument errors are reported

    try:
        service = Service(config)
    except EngineError as exc:
        print(f"hpcdock-service: {exc}", file=sys.stderr)
        return 1
    if args.check:
        report = {**service.health(), "gpu_inventory": service.gpus.inventory_json(),
                  "mounts": service.mount_policy.to_json(), "config": vars(config)}
        print(json.dumps(report, indent=2, default=str))
        service.close()
        return 0
    return serve(service)


def serve(service) -> int:
    import uvicorn

    from .api import create_app

    config = service.config
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach it and holds the token can run containers",
                    config.host)
    # The app's lifespan starts the scheduler and closes the service (and an embedded engine)
    # on shutdown: uvicorn re-raises SIGTERM after its shutdown, so code after run() never runs.
    app = create_app(service, manage_lifecycle=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.close_streams()  # event streams would otherwise hold the shutdown up
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                   timeout_graceful_shutdown=5))
    log.info("hpcdock-service %s on http://%s:%s (engine %s)", service.health()["version"], config.host,
             config.port, service.engine.describe())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
