"""Run every task of an OpenJD template with the reference runtime and print what each reported.

Run by the OpenJD lane (tests/engine/test_openjd_oracle.py) with the Python of ``.venv-openjd``
(``make venv-openjd``: ``openjd-cli`` from PyPI, whose openjd-model and openjd-sessions are older
than the service's, hence a Python of their own). Each task runs in a Session of its own, the
way ``openjd run --task-param`` runs one: the job's and the step's environments entered in order
before it and exited in reverse order after it. Its ActionStatus (openjd-sessions' own reading
of the ``openjd_*`` messages; an environment's, when one failed to enter) and its command's
output are printed as one JSON list on stdout::

    python openjd_reference.py TEMPLATE '{"Param": "value"}' SESSIONS_DIR

SESSIONS_DIR holds the sessions' working directories (openjd-sessions' default, /tmp/OpenJD, is
shared by every user of the machine).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from openjd.model import (
    StepParameterSpaceIterator,
    create_job,
    decode_job_template,
    preprocess_job_parameters,
)
from openjd.sessions import LOG, ActionState, ActionStatus, LogContent, Session, SessionState


class _Output(logging.Handler):
    """Collects the command output lines the Session logs."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        content = getattr(record, "openjd_log_content", None)
        if content is not None and content == LogContent.COMMAND_OUTPUT:
            self.lines.append(record.getMessage())


def _wait(session: Session) -> None:
    while session.state == SessionState.RUNNING:
        time.sleep(0.01)


def run_task(
    params: Any, environments: list[Any], step: Any, task: dict[str, Any], index: int, sessions: Path
) -> dict[str, Any]:
    final: dict[str, Optional[ActionStatus]] = {"status": None}

    def callback(_session_id: str, status: ActionStatus) -> None:
        final["status"] = status

    output = _Output()
    with Session(
        session_id=f"oracle-{index}",
        job_parameter_values=params,
        callback=callback,
        session_root_directory=sessions,
    ) as session:
        entered = []
        for environment in environments:
            final["status"] = None  # (an environment without actions may report nothing)
            entered.append(session.enter_environment(environment=environment))
            _wait(session)
            if final["status"] is not None and final["status"].state != ActionState.SUCCESS:
                break  # the task fails with the environment's status
        else:
            LOG.addHandler(output)  # the task's own output only
            try:
                session.run_task(step_script=step.script, task_parameter_values=task)
                _wait(session)
            finally:
                LOG.removeHandler(output)
        status = final["status"]
        for identifier in reversed(entered):
            session.exit_environment(identifier=identifier)
            _wait(session)
    assert status is not None, "the session reported nothing"
    return {
        "step": step.name,
        "params": {name: str(value.value) for name, value in task.items()},
        "succeeded": status.state == ActionState.SUCCESS,
        "exit_code": status.exit_code,
        "progress": status.progress,
        "status": status.status_message,
        "fail_message": status.fail_message,
        "output": output.lines,
    }


def main(template_path: str, values_json: str, sessions_dir: str) -> None:
    path = Path(template_path)
    template = decode_job_template(template=yaml.safe_load(path.read_text()))
    params = preprocess_job_parameters(
        job_template=template,
        job_parameter_values=json.loads(values_json),
        environment_templates=[],
        job_template_dir=path.parent,
        current_working_dir=path.parent,
    )
    job = create_job(job_template=template, job_parameter_values=params)
    results = []
    for step in job.steps:
        tasks = list(StepParameterSpaceIterator(space=step.parameterSpace)) if step.parameterSpace else [{}]
        for task in tasks:
            environments = [*(job.jobEnvironments or []), *(step.stepEnvironments or [])]
            results.append(run_task(params, environments, step, task, len(results), Path(sessions_dir)))
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
