"""Session rules that need no engine: openjd_env lines, one-line action scripts, the cold wrapper
(run here by the host's /bin/sh, as a container's shell would), environments planned from bundles."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml
from hpcdock_service.bundle_loader import Environment
from hpcdock_service.sessions import action_script, apply_env_messages, cold_command

from tests.unit.test_bundle_loader import bundle, load


def test_env_messages_set_and_unset_in_order() -> None:
    env = {"KEEP": "1", "DROP": "x"}
    why = apply_env_messages(
        "noise\nopenjd_env: A=b=c d\nopenjd_unset_env: DROP\nopenjd_env: A=again\nopenjd_envX: B=1\n", env
    )
    assert why is None
    assert env == {"KEEP": "1", "A": "again"}


def test_a_malformed_env_message_fails_the_environment() -> None:
    env: dict[str, str] = {}
    assert apply_env_messages("openjd_env: 1BAD=no\n", env)
    assert env == {}


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    # The agent exports HPCDOCK_NL; a newline in a value needs it.
    return subprocess.run(
        ["/bin/sh", "-c", "HPCDOCK_NL='\n'; export HPCDOCK_NL; " + script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_action_script_is_one_line_and_keeps_every_value(tmp_path: Path) -> None:
    value = 'it\'s a "value" with $HOME, `ticks`\nand a second line'
    script = action_script(
        ["sh", "-c", 'printf %s "$NAME"; pwd', value], {"NAME": value, "bad-name": "x"}, str(tmp_path)
    )
    assert "\n" not in script and "bad-name" not in script
    printed = sh(script, Path("/"))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == value + str(tmp_path) + "\n"


def resolve(parts: Sequence[str]) -> list[str]:
    return list(parts)


def env(name: str, enter: str, exit: str, **variables: str) -> Environment:
    return Environment(
        name, ("sh", "-c", enter) if enter else (), ("sh", "-c", exit) if exit else (), variables
    )


def test_cold_wrapper_enters_runs_and_exits_in_order(tmp_path: Path) -> None:
    scratch, log = tmp_path / "scratch", tmp_path / "order.log"
    envs = [
        env(
            "job",
            f"echo enter-job >> {log}; echo openjd_env: FROM_JOB=j",
            f"echo exit-job >> {log}",
            COLOUR="red",
        ),
        env(
            "step",
            f'echo enter-step >> {log}; echo made > "$PWD/marker"; echo openjd_env: FROM_STEP="$FROM_JOB"s',
            f"echo exit-step >> {log}",
        ),
    ]
    task = ["sh", "-c", f'echo "task $COLOUR $FROM_JOB $FROM_STEP $(cat {scratch}/marker)" >> {log}; exit 4']
    command = cold_command([(e, resolve) for e in envs], task, str(tmp_path), scratch=str(scratch))
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 4, result
    assert log.read_text().splitlines() == [
        "enter-job",
        "enter-step",
        "task red j js made",
        "exit-step",
        "exit-job",
    ]


def test_cold_wrapper_fails_on_enter_and_exits_what_it_entered(tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    envs = [
        env("job", f"echo enter-job >> {log}", f"echo exit-job >> {log}"),
        env("step", "echo no licence; exit 3", f"echo exit-step >> {log}"),
    ]
    command = cold_command(
        [(e, resolve) for e in envs],
        ["sh", "-c", f"echo task >> {log}"],
        str(tmp_path),
        scratch=str(tmp_path / "s"),
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "no licence" in result.stdout and "environment 'step': onEnter exited with code 3" in result.stdout
    assert log.read_text().splitlines() == ["enter-job", "exit-job"]


def test_environments_are_planned_job_first_then_step(tmp_path: Path) -> None:
    on_enter = {
        "onEnter": {"command": "sh", "args": ["-c", "echo {{Param.Frames}} {{Session.WorkingDirectory}}"]}
    }
    path = bundle(tmp_path / "b", template={"jobEnvironments": [{"name": "job", "variables": {"A": "1"}}]})
    template = yaml.safe_load((tmp_path / "b" / "template.yaml").read_text())
    template["steps"][0]["stepEnvironments"] = [{"name": "step", "script": {"actions": on_enter}}]
    (tmp_path / "b" / "template.yaml").write_text(yaml.safe_dump(template))
    step = load(path).steps[0]
    assert [e.name for e in step.environments] == ["job", "step"]
    assert step.environments[0].variables == {"A": "1"} and step.environments[0].enter == ()
    assert step.environments[1].enter == ("sh", "-c", "echo {{Param.Frames}} {{Session.WorkingDirectory}}")
