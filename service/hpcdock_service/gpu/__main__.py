"""`python -m hpcdock_service.gpu [--run IMAGE CMD...]`: print the GPU inventory as JSON; with --run,
allocate one GPU, attach it on the engine at $DOCKER_HOST, verify, run CMD and print its output."""

from __future__ import annotations

import argparse
import json
import sys

from . import AttachError, EngineCaps, GpuAllocator, detect_gpus, plan_attachment, verify_attachment
from .attach import create_attached


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcdock_service.gpu")
    p.add_argument(
        "--run", nargs=argparse.REMAINDER, metavar="IMAGE CMD", help="run CMD in IMAGE with one GPU"
    )
    args = p.parse_args(argv)
    inv = detect_gpus()
    print(json.dumps(inv.to_json(), indent=2))
    if not args.run:
        return 0
    import docker

    client = docker.from_env()
    caps = EngineCaps.from_engine(client.version(), client.info(), libpod_create=True)
    alloc = GpuAllocator(inv.gpus)
    refusal = alloc.check_request(1)
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    gpus = alloc.try_acquire("gpu-check", 1)
    try:
        att = plan_attachment(gpus, caps, inv)
    except AttachError as e:
        print(e, file=sys.stderr)
        return 1
    print(
        json.dumps({"engine": caps.name, "version": caps.version_text, "attachment": att.to_json()}, indent=2)
    )
    cid = create_attached(client, att, args.run[0], args.run[1:], labels={"hpcdock.task": "gpu-check"})
    ct = client.containers.get(cid)
    try:
        problem = verify_attachment(att, ct.attrs)
        if problem:
            print("verify: " + problem, file=sys.stderr)
            return 1
        print("verify: ok")
        ct.start()
        code = ct.wait(timeout=120)["StatusCode"]
        sys.stdout.write(ct.logs().decode(errors="replace"))
        return code
    finally:
        ct.remove(force=True)
        alloc.release("gpu-check")


if __name__ == "__main__":
    sys.exit(main())
