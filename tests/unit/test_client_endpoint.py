"""The client's side of "one user, one private endpoint", against stand-ins for what else may listen.

The client must never send the token to anything but its own user's service: over TCP a
squatter on the port cannot answer the challenge; on a Unix socket the directory must be the
user's own and the process behind the socket must run as the user. The real service's side is
in tests/engine/test_endpoint.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hpcdock import client as client_mod
from hpcdock import endpoint
from hpcdock.client import Client, NotYourService, ServiceUnavailable

TOKEN = "the-users-secret-token-0123456789"


class Squatter:
    """Whatever holds the address: records every byte it receives and answers every request
    with ``answer`` (a fake proof by default), like a program that collects tokens."""

    def __init__(self, sock: socket.socket, answer: bytes) -> None:
        self.sock = sock
        self.answer = answer
        self.received = b""
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            break
                        self.received += data
                        if b"\r\n\r\n" in data:
                            conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def _answer(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


FAKE_PROOF = _answer("200 OK", b'{"proof": "' + b"0" * 64 + b'", "jobs": []}')


@pytest.fixture
def tcp_squatter() -> Iterator[Squatter]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    squatter = Squatter(sock, FAKE_PROOF)
    yield squatter
    squatter.close()


def test_tcp_squatter_gets_no_token_and_the_client_says_why(tcp_squatter: Squatter) -> None:
    port = tcp_squatter.sock.getsockname()[1]
    with pytest.raises(NotYourService) as info:
        Client(url=f"http://127.0.0.1:{port}", token=TOKEN).jobs()
    assert tcp_squatter.connections == 1 and b"/v1/hello?nonce=" in tcp_squatter.received
    assert TOKEN.encode() not in tcp_squatter.received
    assert b"Authorization" not in tcp_squatter.received
    assert "could not prove it knows the token given to this client" in str(info.value)


def test_tcp_squatter_that_answers_like_an_old_service_is_refused(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    squatter = Squatter(
        sock, _answer("404 Not Found", b'{"error": {"field": "request", "message": "Not Found"}}')
    )
    try:
        config = tmp_path / "config"
        (config / "hpcdock").mkdir(parents=True)
        (config / "hpcdock" / "token").write_text(TOKEN + "\n")
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(config),
            "HPCDOCK_URL": f"http://127.0.0.1:{sock.getsockname()[1]}",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "hpcdock.cli", "jobs"], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        squatter.close()
    assert proc.returncode == 1, proc.stderr
    assert "refusing to send the token" in proc.stderr and "HTTP 404" in proc.stderr
    assert str(config / "hpcdock" / "token") in proc.stderr  # the client's own token path, no other
    assert "Start it with" not in proc.stderr
    assert TOKEN.encode() not in squatter.received


def test_tcp_without_a_token_is_refused_before_connecting(
    tcp_squatter: Squatter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no token there
    port = tcp_squatter.sock.getsockname()[1]
    with pytest.raises(NotYourService, match="no token"):
        Client(url=f"http://127.0.0.1:{port}").health()
    assert tcp_squatter.connections == 0


def _unix_squatter(directory: Path) -> Squatter:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(directory / "service.sock"))
    sock.listen(8)
    return Squatter(sock, _answer("200 OK", b'{"jobs": []}'))


def test_unix_socket_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could have put their socket here
    squatter = _unix_squatter(shared)
    try:
        with pytest.raises(NotYourService, match="writable by other users"):
            Client(url=f"unix://{shared / 'service.sock'}", token=TOKEN).jobs()
    finally:
        squatter.close()
    assert squatter.connections == 0


def test_unix_socket_of_a_process_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    squatter = _unix_squatter(private)
    try:
        # The peer's credentials are read for real from the kernel ...
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(private / "service.sock"))
        assert client_mod._peer_uid(probe) == os.geteuid()
        probe.close()
        # ... and a peer running as anyone else gets nothing.
        monkeypatch.setattr(client_mod, "_peer_uid", lambda sock: os.geteuid() + 1)
        with pytest.raises(NotYourService, match=f"runs as uid {os.geteuid() + 1}"):
            Client(url=f"unix://{private / 'service.sock'}", token=TOKEN).jobs()
    finally:
        squatter.close()
    assert TOKEN.encode() not in squatter.received


def test_no_service_on_the_socket_is_unavailable_not_refused(tmp_path: Path) -> None:
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    for never_run in (private / "service.sock", tmp_path / "no-dir-yet" / "service.sock"):
        with pytest.raises(ServiceUnavailable, match="no hpcdock-service at unix://"):
            Client(url=f"unix://{never_run}", token=TOKEN).health()


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "unix:///run/user/1000/hpcdock/service.sock",
            endpoint.Endpoint(path="/run/user/1000/hpcdock/service.sock"),
        ),
        ("http://127.0.0.1:7654", endpoint.Endpoint(host="127.0.0.1", port=7654)),
        ("tcp://localhost:8000/", endpoint.Endpoint(host="localhost", port=8000)),
        ("http://[::1]:9000", endpoint.Endpoint(host="::1", port=9000)),
        ("http://127.0.0.1", endpoint.Endpoint(host="127.0.0.1", port=7654)),
    ],
)
def test_endpoint_forms(text: str, expected: endpoint.Endpoint) -> None:
    assert endpoint.parse(text) == expected
    assert endpoint.parse(expected.url) == expected


@pytest.mark.parametrize(
    "text",
    [
        "unix://relative.sock",
        "https://127.0.0.1:7654",
        "127.0.0.1:7654",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:7654/v1",
        "ftp://x",
    ],
)
def test_bad_endpoints_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="expected unix:///|absolute|port"):
        endpoint.parse(text)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpcdock.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_hpcdock_url_prints_the_endpoint_the_client_uses(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HPCDOCK_URL"}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    proc = _cli("url", env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == f"unix://{tmp_path}/hpcdock/service.sock"
    proc = _cli("url", env={**env, "HPCDOCK_URL": "http://localhost:8123"})
    assert proc.stdout.strip() == "http://localhost:8123"
    proc = _cli("url", env={**env, "HPCDOCK_URL": "localhost:8123"})
    assert proc.returncode == 2 and "HPCDOCK_URL" in proc.stderr and "Traceback" not in proc.stderr


def test_runtime_dir_falls_back_like_podman_without_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    run = Path(f"/run/user/{os.geteuid()}")
    got = endpoint.runtime_dir()
    if run.is_dir() and run.stat().st_uid == os.geteuid():
        assert got == run / "hpcdock"
    else:
        assert got.name == f"hpcdock-run-{os.geteuid()}"


def test_the_plugin_needs_no_requests() -> None:
    plugin = Path(client_mod.__file__).resolve().parent
    users = [str(p) for p in plugin.rglob("*.py") if "import requests" in p.read_text()]
    assert users == []


def test_panel_starts_the_service_where_its_client_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcdock.panel import service as launcher

    marker = tmp_path / "args"
    exe = tmp_path / "hpcdock-service"
    exe.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    exe.chmod(0o755)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("HPCDOCK_URL", raising=False)
    assert launcher.start_service(str(exe)).wait(10) == 0
    assert marker.read_text().strip() == ""  # the default: the user's private socket
    monkeypatch.setenv("HPCDOCK_URL", "http://127.0.0.1:8765")
    assert launcher.start_service(str(exe)).wait(10) == 0
    assert marker.read_text().strip() == "--listen http://127.0.0.1:8765"
