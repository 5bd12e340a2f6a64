"""`python -m hpcdock_service.gpu [--run IMAGE CMD...]`: print the GPU inventory as JSON; with --run,
attach one GPU through hpcdock's engine layer on the engine at $DOCKER_HOST (or the user's rootless
socket), verify it, run CMD and print its output. What an admin runs on a new GPU node."""

from __future__ import annotations

import argparse
import json
import sys
import uuid

from hpcdock.paths import state_dir

from ..engines.base import ContainerRequest, EngineError
from ..engines.discovery import connect
from .attach import AttachError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcdock_service.gpu")
    p.add_argument(
        "--run", nargs=argparse.REMAINDER, metavar="IMAGE CMD", help="run CMD in IMAGE with one GPU"
    )
    p.add_argument(
        "--allow-rootful", action="store_true", help="accept a rootful engine (GPU nodes run by admins)"
    )
    args = p.parse_args(argv)
    if not args.run:
        from .inventory import detect_gpus

        print(json.dumps(detect_gpus().to_json(), indent=2))
        return 0
    engine = connect(None, state_dir(), allow_rootful=args.allow_rootful)
    broker = engine.gpus
    print(json.dumps(broker.inventory_json(), indent=2))
    refusal = broker.check(1)
    if refusal:
        print(refusal, file=sys.stderr)
        engine.close()
        return 1
    grant = broker.acquire(0, 1)
    assert grant is not None  # nothing else holds a GPU here
    try:
        att = broker.attachment(grant)
        print(json.dumps({"engine": engine.describe(), "attachment": att.to_json()}, indent=2))
        request = ContainerRequest(
            name=f"hpcdock-gpu-check-{uuid.uuid4().hex[:8]}",
            image=args.run[0],
            command=args.run[1:],
            env={},
            workdir="/",
            mounts=[],
            network=False,
            labels={"hpcdock.task": "gpu-check"},
            gpus=grant,
        )
        cid = engine.create(request)  # attaches and verifies the GPU, or raises EngineError saying why
        try:
            print("verify: ok")
            engine.start(cid)
            code = engine.wait(cid, timeout=300)
            for chunk in engine.logs(cid, follow=False):
                sys.stdout.write(chunk.decode(errors="replace"))
            return code
        finally:
            engine.remove(cid)
    except (AttachError, EngineError) as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        broker.release(0)
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
