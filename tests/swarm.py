"""The test user's rootless Docker with a single-node Swarm, started on demand.

``scripts/setup-docker-rootless.sh`` (run once as root with ``--system`` by ``make test``)
starts it as the engine user; here the tests ask for it (the conformance suite through
:mod:`tests.engine.engine_kinds`, which fails rather than skips a Swarm that ``make test``
expects and that cannot be started).
"""

from __future__ import annotations

import functools
import os
import subprocess
from typing import Optional

from tests.helpers import REPO


def start_swarm() -> tuple[Optional[str], str]:
    """(the Swarm manager's ``unix://`` URL, why there is none), the daemon started when it is not
    running."""
    if os.geteuid() == 0:
        return None, "the Swarm tests need the rootless engine user: run `make test`"
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "setup-docker-rootless.sh")], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"rootless Docker did not start: {exc}"
    if out.returncode != 0:
        return None, "rootless Docker did not start: " + (out.stderr.strip() or out.stdout.strip())[-2000:]
    return out.stdout.strip().splitlines()[-1], ""


swarm_url = functools.cache(start_swarm)
