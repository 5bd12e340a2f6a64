"""The service's side of its endpoint, without an engine: where it listens, what it refuses to
listen on, the state-directory lock, the listen settings and the systemd user unit."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hpcdock.endpoint import Endpoint
from hpcdock_service.main import ListenError, listen, main
from hpcdock_service.service import StateDirInUse, StateLock


def test_unix_socket_is_private_and_a_live_one_is_never_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "run" / "hpcdock" / "service.sock"
    first = listen(Endpoint(path=str(path)))
    try:
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(ListenError, match=f"another hpcdock-service already listens on unix://{path}"):
            listen(Endpoint(path=str(path)))
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(path))  # the first one's socket is still there and answers
    finally:
        first.close()
    assert path.exists()  # closed without clean-up, as after kill -9: the next start replaces it
    listen(Endpoint(path=str(path))).close()


def test_unix_socket_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ListenError, match="writable by other users"):
        listen(Endpoint(path=str(shared / "service.sock")))
    assert not (shared / "service.sock").exists()


def test_a_taken_tcp_port_is_refused_with_a_hint(tmp_path: Path) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(
            ListenError, match=f"cannot listen on http://127.0.0.1:{port}: .*private Unix socket"
        ):
            listen(Endpoint(host="127.0.0.1", port=port))
    finally:
        holder.close()


def test_state_lock_names_the_holder_and_is_released_on_close(tmp_path: Path) -> None:
    first = StateLock(tmp_path, "unix:///run/user/1/hpcdock/service.sock")
    with pytest.raises(StateDirInUse) as info:
        StateLock(tmp_path, "unix:///elsewhere.sock")
    assert f"pid {os.getpid()}, listening on unix:///run/user/1/hpcdock/service.sock" in str(info.value)
    assert str(tmp_path) in str(info.value)
    first.release()
    StateLock(tmp_path, "unix:///elsewhere.sock").release()


@pytest.fixture
def service_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HPCDOCK_ALLOW_ROOT", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


@pytest.mark.parametrize(
    "args, field, reason",
    [
        (["--listen", "ftp://host"], "listen", "expected unix:///"),
        (["--listen", "unix://relative"], "listen", "absolute"),
        (["--listen", "tcp://127.0.0.1:7000", "--port", "7001"], "listen", "either listen or host/port"),
        (["--port", "70000"], "port", "TCP port number"),
    ],
)
def test_bad_listen_settings_are_refused_by_name(
    args: list[str], field: str, reason: str, service_env: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([*args, "--check"]) == 2
    err = capsys.readouterr().err
    assert f": {field}" in err and reason in err, err


def test_install_user_unit_writes_a_systemd_user_unit(
    service_env: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--install-user-unit"]) == 0
    unit = service_env / "config" / "systemd" / "user" / "hpcdock-service.service"
    text = unit.read_text()
    assert "ExecStart=" in text and "hpcdock" in text.split("ExecStart=")[1].splitlines()[0]
    assert "KillMode=process" in text and "WantedBy=default.target" in text
    assert "systemctl --user enable --now hpcdock-service" in capsys.readouterr().out
