"""The daemon: one process, one asyncio loop, every task supervised, one thread per device.

Start: take the state directory's write lock (while the daemon runs it is the only writer), open
the databases on the database thread (quick check, or a full check after an unclean stop), void
redemptions a crash left waiting for their passage, open every device (a missing one makes the
box degraded, never stuck), start lanes, print spool, lockers and the HTTP server, then READY=1.
Stop (SIGTERM/SIGINT): STOPPING=1, stop taking scans, let a passage in progress finish briefly,
void what is still pending, persist the spool, close devices; all within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from edge.box import Box, Loop
from edge.config import BoxConfig
from edge.notify import Notifier
from edge.store import WriteLock, fsync_dir

log = logging.getLogger(__name__)
STOP_GRACE_S = 1.5  # a visitor already in the gate gets this long to pass at shutdown
MAINTENANCE_S = 30.0


async def supervised(
    name: str, fn: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Run a long-lived loop until `stop`; restart it with backoff when it fails."""
    delay = 0.5
    while not stop.is_set():
        started = time.monotonic()
        try:
            await fn(stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s failed; restarting in %.1f s", name, delay)
        if stop.is_set():
            break
        if time.monotonic() - started > 60.0:  # it ran healthy for a while: a fresh failure
            delay = 0.5
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)


def api_token(state_dir: Path) -> str:
    """The local API token (owner-only file): the CLI's state-changing commands use it. Written
    to a temporary file, fsync'd and renamed, so a power cut never leaves an empty token."""
    path = state_dir / "api-token"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if len(token) >= 32:
        return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(".api-token.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(state_dir)
    return token


class Extension(Protocol):
    """A part wired in by the composition root (the cloud link): started after the box, its
    loops supervised with the box's, stopped before the box closes."""

    async def start(self, box: Box) -> None: ...
    def loops(self) -> list[tuple[str, Loop]]: ...
    async def stop(self) -> None: ...


class Daemon:
    def __init__(
        self,
        config: BoxConfig,
        *,
        notifier: Notifier | None = None,
        bundle: Path | None = None,
        on_ready: Callable[[Daemon], None] | None = None,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.config = config
        self.extensions = list(extensions)
        self.notifier = notifier or Notifier()
        self.bundle = bundle
        self.on_ready = on_ready
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self.box: Box | None = None
        self.url = ""
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None

    def request_stop(self) -> None:
        self.stop_event.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop)
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        with WriteLock(state) as lock:
            box = Box(self.config, token=api_token(state))
            self.box = box
            try:
                await box.start(full_check=lock.unclean, bundle=self.bundle)
                for ext in self.extensions:
                    await ext.start(box)
                server, sock = box.http_server()
                host, port = sock.getsockname()[:2]
                self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
                async with asyncio.TaskGroup() as tg:
                    serve = tg.create_task(server.serve(sockets=[sock]), name="http")
                    while not server.started and not serve.done():
                        await asyncio.sleep(0.01)
                    loops = box.loops() + [lp for ext in self.extensions for lp in ext.loops()]
                    for name, fn in loops:
                        tg.create_task(supervised(name, fn, self.stop_event), name=name)
                    if not self.stop_event.is_set():  # no READY for a box already stopping
                        self._announce()
                    tg.create_task(self._main_loop(), name="main")
                    await self.stop_event.wait()
                    self.notifier.stopping("stopping / 正在停止")
                    await box.stop_lanes(STOP_GRACE_S)
                    server.should_exit = True
            finally:
                for ext in self.extensions:
                    try:
                        await ext.stop()
                    except Exception:  # the box must still close
                        log.exception("stopping %s failed", type(ext).__name__)
                await box.close()
                with contextlib.suppress(FileNotFoundError):
                    (state / "daemon.json").unlink()
        log.info("stopped")
        return 0

    def _announce(self) -> None:
        assert self.box is not None
        state = self.config.state_dir
        (state / "daemon.json").write_text(
            json.dumps({"pid": os.getpid(), "url": self.url, "site": self.config.site})
        )
        self.ready_after_s = time.monotonic() - self.started_at
        status = self.box.status_line()
        self.notifier.ready(status)
        self.ready.set()
        log.info("ready in %.2f s: %s", self.ready_after_s, status)
        if self.on_ready is not None:
            self.on_ready(self)

    async def _main_loop(self) -> None:
        """Health check, then WATCHDOG=1 and STATUS=; periodic maintenance. Runs on the loop
        itself, so a stuck loop or database thread stops the watchdog and systemd restarts us."""
        assert self.box is not None
        box = self.box
        interval = (self.notifier.watchdog_s or 20.0) / 2
        last_maintenance = time.monotonic()
        while not self.stop_event.is_set():
            healthy = await box.health_check(timeout=max(1.0, interval))
            if healthy:
                self.notifier.watchdog()
            self.notifier.status(box.status_line())
            if time.monotonic() - last_maintenance >= MAINTENANCE_S:
                last_maintenance = time.monotonic()
                try:
                    await box.maintenance()
                except Exception:  # never take the daemon down for housekeeping
                    log.exception("maintenance failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), min(interval, 5.0))


def run_daemon(config: BoxConfig, **kwargs: Any) -> int:
    return asyncio.run(Daemon(config, **kwargs).run())
