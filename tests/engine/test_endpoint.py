"""One user, one private endpoint (issue 18, items 8 and 9), against real service processes.

Each user's service listens by default on a Unix socket in its own private runtime directory,
so services of several users run side by side; TCP is opt-in and a client sends its token only
to what proves it holds it; everything but a bare liveness check needs the token and a loopback
``Host``; one service per state directory, refused before anything is recovered.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from hpcdock.client import Client, NotYourService, ServiceError
from hpcdock_service.api import OPENAPI_FILE

from tests.helpers import REPO, ServiceProcess, make_bundle, remove_leftovers, wait_for, wait_job

pytestmark = pytest.mark.engine


def test_default_is_a_private_unix_socket_that_hpcdock_url_names(service: ServiceProcess) -> None:
    assert service.url == f"unix://{service.runtime_dir}/hpcdock/service.sock"
    sock = Path(service.url[len("unix://") :])
    directory = os.stat(sock.parent)
    assert stat.S_IMODE(directory.st_mode) == 0o700 and directory.st_uid == os.geteuid()
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0
    env = {k: v for k, v in service.env.items() if k != "HPCDOCK_URL"}  # the default the client works out
    proc = subprocess.run(service.cli_command("url"), env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == service.url
    proc = subprocess.run(
        service.cli_command("jobs", "--json"), env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
    # a killed service leaves its socket behind; the next start replaces it
    service.kill()
    assert sock.exists()
    service.start()
    assert service.client().jobs() == []
    service.stop()
    assert not sock.exists(), "a stopped service removes its socket"


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_only_the_liveness_check_answers_without_the_token(service: ServiceProcess) -> None:
    live = service.raw("GET", "/v1/live", auth=False)
    assert live.status == 200 and live.json() == {"ok": True}
    assert service.raw("GET", "/openapi.json", auth=False).status == 401
    schema = service.raw("GET", "/openapi.json")
    assert schema.status == 200
    # what a real service serves is the committed contract the unit test checks the routes against
    assert schema.json() == json.loads((REPO / OPENAPI_FILE).read_text()), f"regenerate {OPENAPI_FILE}"
    open_paths = {"/v1/live", "/v1/hello"}
    checked = []
    for path, methods in schema.json()["paths"].items():
        if path in open_paths:
            continue
        for method in methods:
            resp = service.raw(method.upper(), _fill(path), auth=False)
            assert resp.status == 401, (method, path, resp.status, resp.body)
            checked.append(path)
    assert {"/v1/health", "/metrics", "/v1/jobs", "/v1/events"} <= set(checked)
    for page in ("/docs", "/redoc"):
        assert service.raw("GET", page, auth=False).status in (401, 404)
        assert service.raw("GET", page).status == 404  # no docs page: a browser cannot send the token

    # A wrong token: the service names no path of its own (the caller may be another user) ...
    wrong = service.raw("GET", "/v1/jobs", headers={"Authorization": "Bearer not-the-token"}, auth=False)
    assert wrong.status == 401 and wrong.json()["error"]["field"] == "Authorization"
    assert str(service.config_home) not in wrong.body.decode() and "/" not in wrong.json()["error"]["message"]
    # ... and the client says where its own token came from.
    with pytest.raises(ServiceError) as info:
        Client(url=service.url, token="not-the-token").jobs()
    assert info.value.status == 401 and "the token given to this client" in str(info.value)


@pytest.fixture
def tcp_service(tmp_path: Path, engine_url: str):
    svc = ServiceProcess(tmp_path / "tcp", engine_url, tcp=True).start()
    yield svc
    svc.stop()
    remove_leftovers(svc)


def test_host_header_must_be_a_loopback_name(service: ServiceProcess, tcp_service: ServiceProcess) -> None:
    port = tcp_service.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert tcp_service.raw("GET", "/v1/health", headers={"Host": host}).status == 200, host
    for svc in (service, tcp_service):
        for host in ("evil.example", f"rebound.example:{port}", "127.0.0.1.nip.io", "[::2]:80"):
            resp = svc.raw("GET", "/v1/jobs", headers={"Host": host})
            assert resp.status == 400 and resp.json()["error"]["field"] == "Host", (host, resp.body)
            assert svc.raw("GET", "/v1/live", headers={"Host": host}, auth=False).status == 400


class Relay:
    """A squatter on another port that relays every byte to the real service (and records them)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(conn, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, conn, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    self.received += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_tcp_is_opt_in_and_a_relaying_squatter_gets_no_token(tcp_service: ServiceProcess) -> None:
    assert tcp_service.url.startswith("http://127.0.0.1:")
    assert tcp_service.cli("url").stdout.strip() == tcp_service.url
    assert tcp_service.client().jobs() == []  # the real service proves it holds the token
    relay = Relay(int(tcp_service.url.rsplit(":", 1)[1]))
    try:
        # Its answer to the challenge comes from the real service, but is bound to the address the
        # service was reached at, not the squatter's: the client refuses and sends nothing more.
        with pytest.raises(NotYourService, match="could not prove"):
            Client(url=f"http://127.0.0.1:{relay.port}", token=tcp_service.token).jobs()
    finally:
        relay.close()
    assert b"/v1/hello" in relay.received
    assert tcp_service.token.encode() not in relay.received and b"Authorization" not in relay.received


def test_two_users_services_run_side_by_side_with_default_settings(tmp_path: Path, engine_url: str) -> None:
    # Two users: each their own config (token), state and runtime dir, no address configured.
    a = ServiceProcess(tmp_path / "a", engine_url)
    b = ServiceProcess(tmp_path / "b", engine_url)
    try:
        a.start()
        b.start()
        job = a.client().submit(str(make_bundle(tmp_path / "job", frames="1-2", chunk=2)))
        assert wait_job(a.client(), job["id"])["state"] == "succeeded"
        assert b.client().jobs() == []
        with pytest.raises(ServiceError) as info:
            Client(url=b.url, token=a.token).jobs()
        assert info.value.status == 401
        # a third service wanting the same socket as a running one is told so, and a keeps going
        third = ServiceProcess(tmp_path / "c", engine_url)
        proc = subprocess.run(
            third.command(),
            env={**third.env, "XDG_RUNTIME_DIR": str(a.runtime_dir)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        assert f"another hpcdock-service already listens on {a.url}" in proc.stderr, proc.stderr
        assert a.client().jobs()[0]["id"] == job["id"]
    finally:
        a.stop()
        b.stop()
        remove_leftovers(a)


def test_second_service_on_the_same_state_dir_exits_and_touches_nothing(
    service: ServiceProcess, tmp_path: Path, engine
) -> None:
    client = service.client()
    bundle = make_bundle(tmp_path / "long", frames="1-4", chunk=2, env={"FRAME_SLEEP": "5"})
    job = client.submit(str(bundle))

    def rendering() -> list[dict]:
        running = [t for t in client.tasks(job["id"]) if t["state"] == "running" and t["container"]]
        return running if len(running) == 2 else []

    running = wait_for(rendering, 60, what="two tasks rendering")
    second = ServiceProcess(tmp_path / "second", service.engine_url)
    second.state_dir = service.state_dir  # same state, its own runtime dir, token and socket
    proc = subprocess.run(second.command(), env=second.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"pid {service.proc.pid}" in proc.stderr and service.url in proc.stderr, proc.stderr
    assert str(service.state_dir) in proc.stderr and "Traceback" not in proc.stderr
    assert not (second.runtime_dir / "hpcdock" / "service.sock").exists()
    # the first service's containers were neither adopted nor removed by the second
    for t in running:
        assert engine.inspect(t["container"])["State"]["Running"], t
    job = wait_job(client, job["id"])
    assert job["state"] == "succeeded", job
    tasks = client.tasks(job["id"])
    assert all(t["attempt"] == 1 for t in tasks)
    assert "re-adopt" not in "".join(client.log(t["id"])[0] for t in tasks)
    assert [f["state"] for f in client.frames(job["id"])] == ["done"] * 4
