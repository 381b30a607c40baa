"""The CLI's way to a running daemon: while it runs it is the only writer, so state-changing
commands (redeem, bundle import, scan) go through its loopback API with the box's local token."""

from __future__ import annotations

import fcntl
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.http_tls import client_context


class DaemonError(EdgeError):
    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"daemon answered {status}: {detail}")


def daemon_url(state_dir: Path) -> str | None:
    """The API address of the daemon running on this state directory, or None."""
    try:
        info = json.loads((state_dir / "daemon.json").read_text())
        pid, url = int(info["pid"]), str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The daemon holds the state directory's write lock for its whole life: a file left behind
    # by a killed daemon (its pid perhaps reused since) has the lock free.
    try:
        fd = os.open(state_dir / "edge.lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return url if pid > 0 else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _tls_handler(state_dir: Path, url: str) -> list[urllib.request.BaseHandler]:
    """Over HTTPS ([http] tls), trust exactly the certificate the daemon serves (named in
    daemon.json): a self-made one is in no CA store, and the listen address need not be in it."""
    if not url.startswith("https:"):
        return []
    try:
        cert = Path(json.loads((state_dir / "daemon.json").read_text())["tls_cert"])
        return [urllib.request.HTTPSHandler(context=client_context(cert))]
    except (OSError, ValueError, KeyError, TypeError) as err:  # ssl.SSLError is an OSError
        raise EdgeError(f"cannot load the daemon's HTTPS certificate: {err}") from err


def call(state_dir: Path, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    url = daemon_url(state_dir)
    if url is None:
        raise EdgeError(f"no daemon is running for {state_dir}")
    try:
        token = (state_dir / "api-token").read_text().strip()
    except OSError as err:
        raise EdgeError(f"cannot read the API token in {state_dir}: {err.strerror}") from err
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        # No proxy, ever: the token must not leave the box (http_proxy would be honoured).
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), *_tls_handler(state_dir, url)
        )
        with opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read()).get("detail", err.reason)
        except (ValueError, AttributeError):
            detail = err.reason
        raise DaemonError(err.code, str(detail)) from err
    except urllib.error.URLError as err:
        raise EdgeError(f"daemon at {url} did not answer: {err.reason}") from err
