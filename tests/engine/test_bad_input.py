"""Bad requests get a 4xx naming the field. The bad bundles (CASES) are refused the same way on
every engine: test_conformance.py submits each, with a GPU request to an engine without GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ServiceProcess

pytestmark = pytest.mark.engine


def _break_yaml(b: Path) -> None:
    (b / "hpcdock.yaml").write_text("image: [unclosed\n")


def _unknown_param(b: Path) -> None:
    (b / "parameter_values.yaml").write_text("parameterValues:\n- {name: Bogus, value: '1'}\n")


def _bad_range(b: Path) -> None:
    (b / "parameter_values.yaml").write_text("parameterValues:\n- {name: Frames, value: a-b}\n")


def _append(b: Path, text: str) -> None:
    with open(b / "hpcdock.yaml", "a") as fh:
        fh.write(text)


# case: (how it breaks a good bundle, the field the refusal names, what its message says)
CASES = {
    "unreadable yaml": (_break_yaml, "hpcdock.yaml", "not valid YAML"),
    "unknown parameter": (_unknown_param, "parameter_values", "Bogus"),
    "frame range a-b": (_bad_range, "parameter_values", "a-b"),
    "mount outside roots": (
        lambda b: _append(b, "mounts:\n- {source: /etc, target: /etc}\n"),
        "hpcdock.yaml: mounts[0].source",
        "outside the allowed roots",
    ),
    "privileged": (
        lambda b: _append(b, "privileged: true\n"),
        "hpcdock.yaml: privileged",
        "never run privileged",
    ),
    "host network": (
        lambda b: _append(b, "network_mode: host\n"),
        "hpcdock.yaml: network_mode",
        "host networking",
    ),
    "network: host": (lambda b: _append(b, "network: host\n"), "hpcdock.yaml: network", "true or false"),
    "raw devices": (lambda b: _append(b, "devices: [/dev/sda]\n"), "hpcdock.yaml: devices", "raw devices"),
    "missing image": (
        lambda b: (b / "hpcdock.yaml").write_text(
            (b / "hpcdock.yaml").read_text().replace("hpcdock-test", "no-such-image")
        ),
        "hpcdock.yaml: image",
        "does not exist",
    ),
    "unmet host requirement": (
        lambda b: (b / "template.yaml").write_text(
            (b / "template.yaml")
            .read_text()
            .replace(
                "  script:\n",
                "  hostRequirements:\n    attributes:\n    - {name: attr.custom.farm, anyOf: [nope]}\n  script:\n",
            )
        ),
        "hostRequirements.attributes",
        "no worker of this service has the attribute attr.custom.farm",
    ),
}


def test_requests_without_token_or_with_junk_get_4xx(service: ServiceProcess) -> None:
    assert service.raw("GET", "/v1/jobs", auth=False).status == 401
    for body in (
        {},
        {"bundle_dir": 3},
        {"bundle_dir": "relative/path"},
        {"bundle_dir": "/x", "bogus": 1},
        {"bundle_dir": "/nonexistent"},
    ):
        resp = service.raw("POST", "/v1/jobs", json_body=body)
        assert 400 <= resp.status < 500, (body, resp.body)
        assert resp.json()["error"]["field"]
    assert service.raw("GET", "/v1/jobs/999").status == 404
    assert service.raw("GET", "/v1/jobs/abc").status == 422
    assert service.raw("GET", "/v1/events", headers={"Last-Event-ID": "x"}).status == 400
