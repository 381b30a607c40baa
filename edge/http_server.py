"""uvicorn inside the daemon's loop (edge/daemon.py): the socket of [http] listen, bound before
the server starts so that a port in use is our clear error, and the server of a box's app
(edge/http.py). A reload hands the new server the socket the daemon keeps: the port never closes.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

import uvicorn

from edge.http_tls import ssl_options

if TYPE_CHECKING:
    from edge.box import Box
    from edge.config import BoxConfig


class Server(uvicorn.Server):
    """uvicorn inside our loop: the daemon owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


def server_for(box: Box) -> Server:
    """The server of the box's app, not yet serving: the daemon serves it on the socket that
    listen() bound."""
    from edge.http import create_app

    config = uvicorn.Config(
        create_app(box),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        **ssl_options(box.config),  # HTTPS when [http] tls is on (edge/http_tls.py)
    )
    return Server(config)


def listen(config: BoxConfig) -> socket.socket:
    host, _, port = config.http_listen.rpartition(":")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio then sets TCP_NODELAY on accepted connections, so a
    # response's body does not wait ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {config.http_listen} ([http] listen in "
            f"{config.path}): {err.strerror}"
        ) from err
    sock.listen(128)
    return sock
