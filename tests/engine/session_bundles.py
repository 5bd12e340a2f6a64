"""A step whose environment is entered once per session, as the warm-session scenarios of every
engine run it (tests/engine/test_warm_sessions.py and the conformance suite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tests.helpers import make_bundle

TASK = (
    'cat "{{Session.WorkingDirectory}}/marker" && echo "greeting=$GREETING colour=$COLOUR gone=${GONE:-unset}" '
    '&& sh render.sh "{{Task.Param.Frame}}"'
)


def session_bundle(
    root: Path,
    *,
    frames: str = "1-12",
    enter: Optional[str] = None,
    task: str = TASK,
    env: Optional[dict[str, str]] = None,
    attempts: int = 3,
) -> Path:
    """12 one-frame tasks whose step environment counts its enters and exits in the bundle dir,
    leaves a file in the session's working directory and sets variables both ways."""
    enter = enter or (
        f'echo enter >> {root}/out/enters.log && echo from-enter > "{{{{Session.WorkingDirectory}}}}/marker" '
        "&& echo openjd_env: GREETING=hello world && echo openjd_env: GONE=1 && echo openjd_unset_env: GONE"
    )
    step: dict[str, Any] = {
        "name": "render",
        "parameterSpace": {
            "taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"}]
        },
        "stepEnvironments": [
            {
                "name": "warm",
                "variables": {"COLOUR": "blue"},
                "script": {
                    "actions": {
                        "onEnter": {"command": "sh", "args": ["-c", enter]},
                        "onExit": {"command": "sh", "args": ["-c", f"echo exit >> {root}/out/exits.log"]},
                    }
                },
            }
        ],
        "script": {"actions": {"onRun": {"command": "sh", "args": ["-c", task]}}},
    }
    return make_bundle(root, frames=frames, steps=[step], env=env, settings={"max_attempts": attempts})


def failures(client: Any, job_id: int) -> list[tuple[Optional[str], str]]:
    """Each failed task's error and log, for an assertion's message."""
    return [(t["error"], client.log(t["id"])[0]) for t in client.tasks(job_id) if t["state"] == "failed"]


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0
