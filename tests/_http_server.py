"""A loopback HTTP server for download tests, and a guard against real network access.

``LoopbackServer`` serves bytes the test registers, on 127.0.0.1 and a free port,
from a daemon thread. Switches make it misbehave the way real servers do:

- ``mode = "ok"``: the file as registered;
- ``mode = "corrupt"``: same length, some bytes flipped (checksum mismatch);
- ``mode = "short"``: the first half, with a matching Content-Length (a partial file);
- ``mode = "cut"``: announces the full length, sends half, then closes (broken transfer);
- ``stop()``: the port refuses connections (server down / offline);
- ``chunk_delay``: seconds to sleep between 64 KiB chunks (slow download).

Every socket has a timeout, so a stuck test fails in seconds instead of hanging.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_CHUNK = 64 * 1024
_TIMEOUT_S = 10.0


class LoopbackServer:
    """Serve registered files over HTTP on 127.0.0.1; see the module docstring."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.chunk_delay = 0.0
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = _TIMEOUT_S

            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                announced = len(body)
                if server.mode == "corrupt":
                    body = _corrupt(body)
                elif server.mode == "short":
                    body = body[: len(body) // 2]
                    announced = len(body)
                elif server.mode == "cut":
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(announced))
                self.end_headers()
                try:
                    for start in range(0, len(body), _CHUNK):
                        self.wfile.write(body[start : start + _CHUNK])
                        self.wfile.flush()
                        if server.chunk_delay:
                            time.sleep(server.chunk_delay)
                except (BrokenPipeError, ConnectionResetError):
                    # A client that hung up on purpose (the cancellation tests): no
                    # traceback from socketserver in the test output.
                    self.close_connection = True
                    return
                if server.mode == "cut":
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.timeout = _TIMEOUT_S
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.running = True

    def url(self, name: str) -> str:
        """The address of file ``name`` (registered with :meth:`add`)."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def add(self, name: str, body: bytes) -> str:
        """Serve ``body`` as ``/name``; returns its URL."""
        self.files["/" + name] = body
        return self.url(name)

    def count(self, name: str) -> int:
        """How many requests asked for ``name``."""
        return self.requests.count("/" + name)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Shut down; the port then refuses connections."""
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=_TIMEOUT_S)
            self.running = False


def _corrupt(body: bytes) -> bytes:
    flipped = bytearray(body)
    for index in range(0, len(flipped), max(1, len(flipped) // 7)):
        flipped[index] ^= 0xFF
    return bytes(flipped)


def block_internet(monkeypatch: pytest.MonkeyPatch, *, also_allow: tuple[str, ...] = ()) -> None:
    """Make any attempt to look up or connect to anything but loopback fail.

    A guard for a test's duration (undone by ``monkeypatch``), so a test whose URL
    override silently failed cannot reach the publishers' servers. ``also_allow``
    names more hosts that may be looked up (this machine's own name, for Dask).
    """
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo
    loopback = ("127.0.0.1", "localhost", "::1")
    lookups = loopback + tuple(also_allow)

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in loopback:
            raise OSError(f"test tried to reach {address!r}; tests must stay on 127.0.0.1")
        return real_connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in lookups:
            raise OSError(f"test tried to look up {host!r}; tests must stay on 127.0.0.1")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
