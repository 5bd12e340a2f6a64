"""Task limit and log cap settings in service.yaml: defaults, and bad values refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hpcdock_service.config import load_config
from hpcdock_service.errors import BadInput


def write(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_defaults_limit_a_task_below_the_whole_machine(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.yaml")
    machine_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    assert config.task_memory_mib is not None and 0 < config.task_memory_mib < machine_mib
    assert config.task_pids > 0 and config.log_cap_mib == 64 and config.task_vcpus is None


def test_limits_are_read_from_service_yaml(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, {"task_pids": 256, "task_memory_mib": None, "task_vcpus": 1.5, "log_cap_mib": 8})
    )
    assert (config.task_pids, config.task_memory_mib, config.task_vcpus, config.log_cap_mib) == (
        256,
        None,
        1.5,
        8,
    )


@pytest.mark.parametrize(
    "key,value",
    [
        ("task_pids", 0),
        ("task_pids", None),
        ("task_memory_mib", "lots"),
        ("task_vcpus", -1),
        ("log_cap_mib", 1.5),
        ("log_cap_mib", True),
    ],
)
def test_bad_limits_are_refused_by_name(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(BadInput) as err:
        load_config(write(tmp_path, {key: value}))
    assert err.value.field.endswith(key) and "> 0" in err.value.message
