"""The engine layer tells an engine it cannot reach from one that refused (real sockets, no engine)."""

from __future__ import annotations

import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from hpcdock_service.engines.base import EngineError, EngineUnreachable
from hpcdock_service.engines.local import LocalEngine


def test_a_missing_socket_and_a_refused_connection_are_unreachable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnreachable, match="missing.sock cannot be reached: FileNotFoundError"):
        LocalEngine(f"unix://{tmp_path / 'missing.sock'}")
    stale = tmp_path / "stale.sock"  # what a killed engine leaves: the file, nobody listening
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
        with pytest.raises(EngineUnreachable, match="stale.sock cannot be reached: ConnectionRefusedError"):
            LocalEngine(f"unix://{stale}")


class _Refuses(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the http.server protocol
        body = b'{"message": "refused for the test"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # BaseHTTPRequestHandler wants a (host, port) client address
        conn, _ = super().get_request()
        return conn, ("local", 0)


def test_an_engine_that_answers_with_an_error_refused_and_is_not_unreachable(tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"
    server = _UnixHTTPServer(str(sock), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EngineError, match="refused for the test") as refused:
            LocalEngine(f"unix://{sock}")
        assert not isinstance(refused.value, EngineUnreachable)
    finally:
        server.shutdown()
        server.server_close()
