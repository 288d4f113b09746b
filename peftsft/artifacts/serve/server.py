"""Run the app with uvicorn: on a socket bound first (so `--port 0` can say which port it got), in the
foreground (`serve` command) or in a background thread (tests, and apps that embed the server)."""

from __future__ import annotations

import errno
import socket
import threading
import time

from peftsft.core.errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); a clear error when the port is taken. Clients may
    connect from here on: they wait in the backlog until the server starts accepting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "pick another --port (0 takes any free one)" if exc.errno == errno.EADDRINUSE else "check --host"
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}", hint=hint) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _server(app, log_level: str):
    import uvicorn

    # a few seconds for open streams on Ctrl-C, then stop anyway
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3)
    return uvicorn.Server(config)


def run(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve until Ctrl-C."""
    _server(app, log_level).run(sockets=[sock])


class ServerThread:
    """The app served from a background thread: `start()` returns once it accepts connections; `stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = _server(app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 30) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
