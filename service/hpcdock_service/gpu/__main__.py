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
from ..gpu_broker import GpuBroker
from .attach import AttachError, verify_attachment


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
    engine, embedded = connect(None, state_dir(), allow_rootful=args.allow_rootful)
    broker = GpuBroker.detect(engine)
    print(json.dumps(broker.inventory_json(), indent=2))
    refusal = broker.check_request(1)
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    indices = broker.acquire(0, 1) or []
    try:
        att = broker.attachment(indices)
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
            gpu=att,
        )
        cid = engine.create(request)
        try:
            problem = verify_attachment(att, engine.inspect(cid))
            if problem:
                print("verify: " + problem, file=sys.stderr)
                return 1
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
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
