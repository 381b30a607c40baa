"""The daemon: one process, one asyncio loop, every task supervised, one thread per device.

Start: take the state directory's write lock (while the daemon runs it is the only writer), open
the databases on the database thread (quick check, or a full check after an unclean stop), void
redemptions a crash left waiting for their passage, open every device (a missing one makes the
box degraded, never stuck), start lanes, print spool, lockers and the HTTP server, then READY=1.
Stop (SIGTERM/SIGINT): STOPPING=1, stop taking scans, let a passage in progress finish briefly,
void what is still pending, persist the spool, close devices; all within 5 s.
Reload (SIGHUP, the cloud's `config` / `reload_config`, POST /api/v1/config/reload): the config on
disk is validated while the box runs (refused: it keeps running as it is); then RELOADING=1, the
box stops as on SIGTERM but gives a visitor in the gate the whole passage, the extensions stop,
and a new box starts from the new config on the same write lock and the same listening socket
(the HTTP port never closes: connections wait in its backlog), the extensions (the link) start
again on it, READY=1. A new config that fails to start gives way to the one that ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from edge import cloud_config
from edge.box import Box, Loop
from edge.cloud_config import ConfigRefused, ReloadRequest
from edge.config import BoxConfig
from edge.http_server import Server, listen, server_for
from edge.http_tls import material
from edge.notify import Notifier
from edge.store import WriteLock, fsync_dir

log = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.001
STOP_GRACE_S = 1.5  # a visitor already in the gate gets this long to pass at shutdown
RELOAD_GRACE_S = 10.0  # a reload is in no hurry: the visitor gets the whole passage window
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
        self.reloads = 0  # boxes started after the first (tests wait on it)
        self._wake = asyncio.Event()  # a stop or a reload request
        self._requests: deque[tuple[ReloadRequest, asyncio.Future[str]]] = deque()
        self._serving = False  # READY and not switching: a caller may wait for a reload
        self._listener: socket.socket | None = None  # kept across reloads
        self._listen_addr = ""

    def request_stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def request_reload(self, req: ReloadRequest) -> asyncio.Future[str]:
        """Queue a reload (handled in turn by the main task); the future has the outcome."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.stop_event.is_set():
            fut.set_result("refused: the daemon is stopping")
        else:
            self._requests.append((req, fut))
            self._wake.set()
        return fut

    async def reload(self, req: ReloadRequest) -> str:
        """Box.reload: the outcome, or "reload queued" when the caller does not wait, or runs
        while the box is (re)starting (an extension's start must not wait for itself)."""
        fut = self.request_reload(req)
        if not (req.wait and self._serving) and not fut.done():
            return "reload queued"
        return await asyncio.shield(fut)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # A scan hops threads (scanner, loop, database, gate) and each hop may wait a whole
        # switch interval for the GIL while a bundle import parses on another thread: 1 ms
        # instead of 5 keeps a passage quick while the box imports.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(
                signal.SIGHUP, lambda: self.request_reload(ReloadRequest("signal", wait=False))
            )
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        with WriteLock(state) as lock:
            token = api_token(state)
            try:
                await self._generations(token, lock.unclean)
            finally:
                for _, fut in self._requests:
                    if not fut.done():
                        fut.set_result("refused: the daemon stopped")
                if self._listener is not None:
                    self._listener.close()
                with contextlib.suppress(FileNotFoundError):
                    (state / "daemon.json").unlink()
        log.info("stopped")
        return 0

    async def _generations(self, token: str, unclean: bool) -> None:
        """One box per config: run it until a stop, or until a valid reload replaces it."""
        gen = await self._open(self.config, token, unclean, self.bundle)
        done: tuple[ReloadRequest, asyncio.Future[str], float, str] | None = None
        while (change := await self._serve(*gen, done)) is not None:
            new, req, fut, t0 = change
            self.notifier.watchdog()  # a reload takes a while: it is not a stuck loop
            try:
                gen = await self._open(new, token, False, None)
            except Exception as err:  # back to what ran; a second failure stops the daemon
                log.exception("the new config did not start; starting the one that ran")
                if req.revision is not None:
                    running = self.config.managed
                    await asyncio.to_thread(
                        cloud_config.restore, self.config.state_dir, running, req.revision
                    )
                gen = await self._open(self.config, token, False, None)
                done = (req, fut, t0, f"start_failed: {err}")
            else:
                self.config = new
                done = (req, fut, t0, "")

    async def _open(
        self, config: BoxConfig, token: str, full_check: bool, bundle: Path | None
    ) -> tuple[Box, Server, socket.socket]:
        """A started box with its extensions and an HTTP server (not yet serving)."""
        box = Box(config, token=token)
        self.box = box
        box.reload = self.reload
        sock: socket.socket | None = None
        try:
            await box.start(full_check=full_check, bundle=bundle)
            for ext in self.extensions:
                await self._start_extension(ext, box)
            sock = self._listen(box)
            server = server_for(box)
        except BaseException:
            if sock is not None:
                sock.close()
            await self._close(box)
            raise
        return box, server, sock

    async def _start_extension(self, ext: Extension, box: Box) -> None:
        """Start an extension, but give up on it when a stop comes first (the cloud link of a
        new box may wait for its catch-up): the box then closes as on any stop, and _close
        stops the extension whatever it got to."""
        starting = asyncio.ensure_future(ext.start(box))
        stopping = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if starting.done():
            starting.result()  # raises what the start raised
            return
        log.info("stop requested while %s was starting; not waiting for it", type(ext).__name__)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting

    def _listen(self, box: Box) -> socket.socket:
        """The daemon's listening socket, bound once and kept across reloads (rebound only
        when [http] listen changed). Each server serves a duplicate of it and closes only
        that, so the port never closes."""
        if self._listener is None or self._listen_addr != box.config.http_listen:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._listener = listen(box.config)
            self._listen_addr = box.config.http_listen
        host, port = self._listener.getsockname()[:2]
        scheme = "https" if box.config.http_tls.enabled else "http"  # a reload may switch it
        self.url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        return self._listener.dup()

    async def _serve(
        self,
        box: Box,
        server: Server,
        sock: socket.socket,
        done: tuple[ReloadRequest, asyncio.Future[str], float, str] | None,
    ) -> tuple[BoxConfig, ReloadRequest, asyncio.Future[str], float] | None:
        """READY, then run until a stop (None) or a reload that passed validation (the new
        config). The box is closed when this returns."""
        stop = asyncio.Event()  # this box's loops: set by a stop or a reload
        change = None
        try:
            async with asyncio.TaskGroup() as tg:
                serve = tg.create_task(server.serve(sockets=[sock]), name="http")
                while not server.started and not serve.done():
                    await asyncio.sleep(0.01)
                loops = box.loops() + [lp for ext in self.extensions for lp in ext.loops()]
                for name, fn in loops:
                    tg.create_task(supervised(name, fn, stop), name=name)
                if not self.stop_event.is_set():  # no READY for a box already stopping
                    self._announce()
                tg.create_task(self._main_loop(stop), name="main")
                await self._settle(box, done)
                self._serving = True
                change = await self._next_change()
                self._serving = False
                if change is None:
                    self.notifier.stopping("stopping / 正在停止")
                else:
                    usec = time.monotonic_ns() // 1000
                    self.notifier.send(
                        "RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading 重新加载配置"
                    )
                stop.set()
                await box.stop_lanes(STOP_GRACE_S if change is None else RELOAD_GRACE_S)
                if change is not None:  # the grace may be long: still alive, not stuck
                    self.notifier.watchdog()
                server.should_exit = True
        finally:
            sock.close()  # the server's duplicate (closed already when it ran)
            self._serving = False
            stop.set()
            await self._close(box)
        return change

    async def _close(self, box: Box) -> None:
        for ext in self.extensions:
            try:
                await ext.stop()
            except Exception:  # the box must still close
                log.exception("stopping %s failed", type(ext).__name__)
        await box.close()

    async def _settle(
        self, box: Box, done: tuple[ReloadRequest, asyncio.Future[str], float, str] | None
    ) -> None:
        """Report the config this box runs (config_applied / config_refused) and answer the
        reload that started it."""
        try:
            if done is None:
                await cloud_config.applied(box, None)
                return
            req, fut, t0, failure = done
            if failure:
                reason, _, detail = failure.partition(": ")
                await cloud_config.refused(box, req, ConfigRefused(reason, detail))
                outcome = f"refused: {failure}; the config that ran before runs again"
            else:
                await cloud_config.applied(box, req, time.monotonic() - t0)
                m = box.config.managed
                outcome = f"applied{f': revision {m.revision}' if m is not None else ''}"
            if not fut.done():
                fut.set_result(outcome)
        except Exception:  # reporting must not take the new box down
            log.exception("reporting the config failed")
        finally:
            if done is not None:
                self.reloads += 1

    async def _next_change(
        self,
    ) -> tuple[BoxConfig, ReloadRequest, asyncio.Future[str], float] | None:
        """Wait for a stop (None) or a reload request whose config is valid."""
        while not self.stop_event.is_set():
            if not self._requests:
                self._wake.clear()
                if not self._requests and not self.stop_event.is_set():
                    await self._wake.wait()
                continue
            req, fut = self._requests.popleft()
            t0 = time.monotonic()
            m = self.config.managed
            if req.revision is not None and m is not None and m.revision >= req.revision:
                fut.set_result(f"already applied: revision {m.revision}")
                continue
            try:
                new = await asyncio.to_thread(cloud_config.from_disk, self.config)
                got = new.managed.revision if new.managed is not None else None
                if req.revision is not None and (got is None or got < req.revision):
                    why = "; ".join(new.managed_skipped) or "not stored"
                    raise ConfigRefused("did_not_load", f"revision {req.revision}: {why}")
            except ConfigRefused as err:
                assert self.box is not None
                if req.revision is not None:
                    await asyncio.to_thread(
                        cloud_config.restore, self.config.state_dir, m, req.revision
                    )
                await cloud_config.refused(self.box, req, err)
                if not fut.done():
                    fut.set_result(f"refused: {err}; the running config stays")
                continue
            if self.stop_event.is_set():  # a stop came while the new config was checked
                fut.set_result("refused: the daemon is stopping")
                return None
            log.info("reloading (%s)", req.source)
            return new, req, fut, t0
        return None

    def _announce(self) -> None:
        assert self.box is not None
        state = self.config.state_dir
        tls = material(self.box.config, create=False)  # the CLI pins the served certificate
        (state / "daemon.json").write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "url": self.url,
                    "site": self.config.site,
                    "tls_cert": None if tls is None else str(tls.cert),
                }
            )
        )
        status = self.box.status_line()
        self.notifier.ready(status)
        if self.ready.is_set():  # after a reload
            log.info("ready again: %s", status)
            return
        self.ready_after_s = time.monotonic() - self.started_at
        self.ready.set()
        log.info("ready in %.2f s: %s", self.ready_after_s, status)
        if self.on_ready is not None:
            self.on_ready(self)

    async def _main_loop(self, stop: asyncio.Event) -> None:
        """Health check, then WATCHDOG=1 and STATUS=; periodic maintenance. Runs on the loop
        itself, so a stuck loop or database thread stops the watchdog and systemd restarts us."""
        assert self.box is not None
        box = self.box
        interval = (self.notifier.watchdog_s or 20.0) / 2
        last_maintenance = time.monotonic()
        while not stop.is_set():
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
                await asyncio.wait_for(stop.wait(), min(interval, 5.0))


def run_daemon(config: BoxConfig, **kwargs: Any) -> int:
    return asyncio.run(Daemon(config, **kwargs).run())
