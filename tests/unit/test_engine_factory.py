"""``engine:`` in service.yaml chooses the engine; a bad value or one this build lacks is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hpcdock_service import main
from hpcdock_service.config import ENGINES, load_config
from hpcdock_service.errors import BadInput


def write(tmp_path: Path, settings: dict[str, Any]) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_the_engine_is_local_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.yaml").engine == "local"
    assert load_config(write(tmp_path, {"engine": "swarm"})).engine == "swarm"


@pytest.mark.parametrize("value", ["kubernetes", "Local", 3, None, ["local"]])
def test_a_bad_engine_is_refused_naming_the_key_and_the_allowed_values(tmp_path: Path, value: Any) -> None:
    path = write(tmp_path, {"engine": value})
    with pytest.raises(BadInput) as err:
        load_config(path)
    assert err.value.field == f"{path}: engine"
    assert all(name in err.value.message for name in ENGINES) and repr(value) in err.value.message


def test_the_service_stops_at_an_engine_that_does_not_answer_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HPCDOCK_ALLOW_ROOT", "1")  # the unit lane may run as root; nothing is served here
    # no other manager to fall back to (the engine user's own rootless Docker, say)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    missing = tmp_path / "no-such-docker.sock"
    config = write(
        tmp_path,
        {"engine": "swarm", "engine_socket": f"unix://{missing}", "token_file": str(tmp_path / "token")},
    )
    code = main.main(["--config", str(config), "--state-dir", str(tmp_path / "state"), "--check"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("hpcdock-service: ") and str(missing) in lines[0], err
