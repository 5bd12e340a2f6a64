"""The README's OpenJD support table says what the service does: each row's claim is tried.

A row "supported" must load (or, for stdout messages, parse) without a word; a row "refused:
REASON" must be refused at submit with REASON in the message. Every row has a probe here and
every probe a row, so the table cannot gain or lose a feature without this test changing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hpcdock_service.bundle_loader import load_bundle
from hpcdock_service.config import WorkerCapabilities
from hpcdock_service.errors import BadInput
from hpcdock_service.logparse import LogParser, OpenJDFail, OpenJDStatus, Progress
from hpcdock_service.mounts import MountPolicy
from hpcdock_service.sessions import apply_env_messages

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| (?P<feature>[^|]+?) \| (?P<claim>[^|]+?) \|")


def table() -> dict[str, str]:
    text = README.read_text()
    body = text.split("<!-- openjd-support", 1)[1].split("<!-- /openjd-support -->", 1)[0]
    rows = {}
    for line in body.splitlines()[1:]:
        match = ROW.match(line)
        if match and not set(match["claim"]) <= set("-"):
            rows[match["feature"]] = match["claim"]
    rows.pop("OpenJD feature")
    return rows


def step(**extra: Any) -> dict[str, Any]:
    return {"name": "s", "script": {"actions": {"onRun": {"command": "true"}}}, **extra}


def amounts(*items: dict[str, Any]) -> dict[str, Any]:
    return {"hostRequirements": {"amounts": list(items)}}


def attributes(*items: dict[str, Any]) -> dict[str, Any]:
    return {"hostRequirements": {"attributes": list(items)}}


CHUNKS = {
    "taskParameterDefinitions": [
        {
            "name": "F",
            "type": "CHUNK[INT]",
            "range": "1-10",
            "chunks": {"defaultTaskCount": 2, "rangeConstraint": "CONTIGUOUS"},
        }
    ]
}
PATHS = [
    {"name": "In", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "IN", "default": "."},
    {"name": "Out", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT", "default": "out"},
]
SCRIPT_ARGS = {"actions": {"onRun": {"command": "echo", "args": ["{{RawParam.In}}", "{{Param.In}}"]}}}
EMBEDDED = {
    "actions": {"onRun": {"command": "{{Task.File.F}}"}},
    "embeddedFiles": [{"name": "F", "type": "TEXT", "runnable": True, "data": "echo hi"}],
}

# feature (as the table names it) -> the template it is tried with (extra keys of the template)
TEMPLATES: dict[str, dict[str, Any]] = {
    "`steps`, `dependencies`": {
        "steps": [step(), {**step(), "name": "t", "dependencies": [{"dependsOn": "s"}]}]
    },
    "`parameterSpace`, `combination`": {
        "steps": [
            step(
                parameterSpace={
                    "taskParameterDefinitions": [
                        {"name": "A", "type": "INT", "range": "1-2"},
                        {"name": "B", "type": "STRING", "range": ["x", "y"]},
                    ],
                    "combination": "(A, B)",
                }
            )
        ]
    },
    "`CHUNK[INT]`": {"extensions": ["TASK_CHUNKING"], "steps": [step(parameterSpace=CHUNKS)]},
    "`targetRuntimeSeconds`": {
        "extensions": ["TASK_CHUNKING"],
        "steps": [
            step(
                parameterSpace={
                    "taskParameterDefinitions": [
                        {
                            "name": "F",
                            "type": "CHUNK[INT]",
                            "range": "1-10",
                            "chunks": {
                                "defaultTaskCount": 2,
                                "targetRuntimeSeconds": 60,
                                "rangeConstraint": "CONTIGUOUS",
                            },
                        }
                    ]
                }
            )
        ],
    },
    "`onRun.timeout`, `cancelation`": {
        "steps": [
            {
                "name": "s",
                "script": {
                    "actions": {
                        "onRun": {
                            "command": "true",
                            "timeout": 60,
                            "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 5},
                        }
                    }
                },
            }
        ]
    },
    "`embeddedFiles`": {"steps": [{"name": "s", "script": EMBEDDED}]},
    "PATH `dataFlow`": {"parameterDefinitions": PATHS, "steps": [step()]},
    "`RawParam`": {"parameterDefinitions": PATHS, "steps": [{"name": "s", "script": SCRIPT_ARGS}]},
    "`amount.worker.vcpu`, `amount.worker.memory`": {
        "steps": [
            step(
                **amounts(
                    {"name": "amount.worker.vcpu", "min": 1}, {"name": "amount.worker.memory", "min": 64}
                )
            )
        ]
    },
    "`amount.worker.gpu`": {"steps": [step(**amounts({"name": "amount.worker.gpu", "min": 1}))]},
    "`amount.worker.gpu.memory`": {
        "steps": [step(**amounts({"name": "amount.worker.gpu.memory", "min": 1024}))]
    },
    "`attr.worker.os.family`, `attr.worker.cpu.arch`": {
        "steps": [
            step(
                **attributes(
                    {"name": "attr.worker.os.family", "anyOf": ["linux"]},
                    {"name": "attr.worker.cpu.arch", "anyOf": ["x86_64", "arm64"]},
                )
            )
        ]
    },
    "`attr.<custom>`, `amount.worker.<custom>`": {
        "steps": [
            step(
                hostRequirements={
                    "attributes": [{"name": "attr.custom.site", "anyOf": ["paris"]}],
                    "amounts": [{"name": "amount.worker.disk.scratch", "min": 100}],
                }
            )
        ]
    },
    "`amount.<resource>`": {"steps": [step(**amounts({"name": "amount.houdini_engine", "min": 1}))]},
    "`vendor:amount.*`": {"steps": [step(**amounts({"name": "acme:amount.lic", "min": 1}))]},
    "`jobEnvironments`, `stepEnvironments`": {
        "jobEnvironments": [{"name": "e", "variables": {"A": "1"}}],
        "steps": [
            step(stepEnvironments=[{"name": "f", "script": {"actions": {"onEnter": {"command": "true"}}}}])
        ],
    },
    "environments' `embeddedFiles`": {
        "jobEnvironments": [
            {
                "name": "e",
                "script": {
                    "actions": {"onEnter": {"command": "{{Env.File.F}}"}},
                    "embeddedFiles": [{"name": "F", "type": "TEXT", "runnable": True, "data": "echo hi"}],
                },
            }
        ],
        "steps": [step()],
    },
    "other extensions": {"extensions": ["EXPR"], "steps": [step()]},
}


def _messages() -> None:
    parser = LogParser()
    updates = parser.feed("openjd_status: half way\nopenjd_progress: 50\nopenjd_fail: no sky\n")
    assert updates == [OpenJDStatus("half way"), Progress(50.0), OpenJDFail("no sky")]


def _env_messages() -> None:
    env = {"B": "2"}
    assert apply_env_messages("openjd_env: A=1\nopenjd_unset_env: B\n", env) is None
    assert env == {"A": "1"}


# features that are not template content: tried by what they do
BEHAVIOURS: dict[str, Callable[[], None]] = {
    "`openjd_status`, `openjd_progress`, `openjd_fail`": _messages,
    "`openjd_env`, `openjd_unset_env`": _env_messages,
}


def _load(tmp_path: Path, extra: dict[str, Any]) -> None:
    root = tmp_path / "bundle"
    root.mkdir()
    template = {"specificationVersion": "jobtemplate-2023-09", "name": "probe", **extra}
    (root / "template.yaml").write_text(yaml.safe_dump(template))
    (root / "hpcdock.yaml").write_text(yaml.safe_dump({"image": "img:1"}))
    capabilities = WorkerCapabilities.build(
        {"attr.custom.site": ["paris"], "amount.worker.disk.scratch": 500}, [24576]
    )
    load_bundle(
        str(root),
        mount_policy=MountPolicy.build([str(tmp_path)]),
        gpu_check=lambda n: None,  # a machine with a GPU
        capacity={"amount.houdini_engine": 2, "amount.worker.vcpu": 4, "amount.worker.memory": 4096},
        capabilities=capabilities,
    )


def test_every_row_has_a_probe_and_every_probe_a_row() -> None:
    assert set(table()) == set(TEMPLATES) | set(BEHAVIOURS)


@pytest.mark.parametrize("feature", sorted(table()))
def test_each_rows_claim_holds(tmp_path: Path, feature: str) -> None:
    claim = table()[feature]
    if feature in BEHAVIOURS:
        assert claim == "supported"
        BEHAVIOURS[feature]()
        return
    if claim == "supported":
        _load(tmp_path, TEMPLATES[feature])
        return
    assert claim.startswith("refused: "), claim
    with pytest.raises(BadInput) as err:
        _load(tmp_path, TEMPLATES[feature])
    assert claim[len("refused: ") :] in str(err.value)
