"""The daemon's handle on the link process (sync/link_proc.py): the same calls as sync.link.Link
(start, stop, notify, status, rotate, request_certificate, publish_status), with the link itself
running in a child process so that its Python work never holds the lanes' GIL.

Threads: one supervisor thread per client spawns the child, reads its stdout (the callbacks
`on_down` and `on_refused` run on it, as they run on Link's own thread) and restarts a child that
died (backoff, logged; the status says connected False with the exit as last_error). A second
thread logs the child's stderr under `sync.link_proc`. The child is spawned by the supervisor
thread, which lives as long as the child: the child's parent-death signal is tied to it.

Nothing is lost with a child: the outbox and the inbox are in ledger.db, and a message stored
but not yet handed over is left for `on_restart` (the daemon handles what its inbox has left).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from edge.trust import TrustAnchor
from sync.link import ROTATE_TIMEOUT_S
from sync.protocol import Down

log = logging.getLogger(__name__)
child_log = logging.getLogger("sync.link_proc")

STOP_WAIT_S = 3.0  # a clean stop (offline status, PUBACK) gets this long, then a kill
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 60.0  # a child that ran this long restarts at once after dying
_LEVELS = logging.getLevelNamesMapping()


class LinkClient:
    def __init__(
        self,
        ledger: Path,
        *,
        box: str,
        site: str,
        host: str,
        port: int,
        ca: Path,
        cert: Path,
        key: Path,
        anchor: TrustAnchor,
        on_down: Callable[[Down], None],
        on_refused: Callable[[str, str], None] | None = None,
        on_restart: Callable[[], None] | None = None,
        keepalive: int = 30,
        status_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """`on_down`, `on_refused` and `on_restart` (a child was started again after dying) run
        on the client's supervisor thread: hand the work over, do not block."""
        self.box = box
        self._config: dict[str, Any] = {
            "ledger": str(ledger.absolute()),
            "box": box,
            "site": site,
            "host": host,
            "port": port,
            "ca": str(ca.absolute()),
            "cert": str(cert.absolute()),
            "key": str(key.absolute()),
            "anchor": {"public_key": anchor.public_key.hex(), "label": anchor.label},
            "keepalive": keepalive,
        }
        self.on_down, self.on_refused, self.on_restart = on_down, on_refused, on_restart
        self.status_extra = status_extra
        self._lock = threading.Lock()  # guards _status, _rotations, _proc, _extra
        self._write_lock = threading.Lock()
        self._status: dict[str, Any] = {"connected": False}
        self._rotations: dict[int, Future[bool]] = {}
        self._n = 0
        self._extra: dict[str, Any] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._state = "new"
        self._supervisor: threading.Thread | None = None
        self.restarts = 0

    # -- the interface Link has ----------------------------------------------------------------

    def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"link already {self._state}")
        self._state = "started"
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"link-proc-{self.box}", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        """Ask the child for a clean stop (offline status), kill it after STOP_WAIT_S; join.
        Idempotent; any thread but the supervisor."""
        with self._lock:
            state, self._state = self._state, "stopped"
        if state != "started":
            return
        self._stopping.set()
        self._send({"stop": True})
        assert self._supervisor is not None
        self._supervisor.join(STOP_WAIT_S)
        if self._supervisor.is_alive():
            with self._lock:
                proc = self._proc
            if proc is not None:
                log.warning("link process %d did not stop in %.0f s: killed", proc.pid, STOP_WAIT_S)
                proc.kill()
            self._supervisor.join()

    def notify(self) -> None:
        self._send({"notify": True})

    def publish_status(self) -> None:
        self._push_extra(force=True)
        self._send({"publish_status": True})

    def request_certificate(self, csr_pem: bytes) -> None:
        self._send({"csr": csr_pem.decode("ascii")})

    def rotate(self, cert: Path, key: Path, timeout: float = ROTATE_TIMEOUT_S) -> Future[bool]:
        """The future is False when the rotation failed, or when the child died meanwhile."""
        fut: Future[bool] = Future()
        with self._lock:
            self._n += 1
            n = self._n
            self._rotations[n] = fut
        msg = {"n": n, "cert": str(cert), "key": str(key), "timeout": timeout}
        if not self._send({"rotate": msg}):
            self._resolve(n, False)
        return fut

    def status(self) -> dict[str, Any]:
        with self._lock:
            st = dict(self._status)
        if self.restarts:
            st["process_restarts"] = self.restarts
        return st

    @property
    def pid(self) -> int | None:
        """The running link process's pid (None between a death and its restart)."""
        with self._lock:
            return None if self._proc is None else self._proc.pid

    # -- the child -----------------------------------------------------------------------------

    def _send(self, doc: dict[str, Any]) -> bool:
        with self._lock:
            proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        line = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        with self._write_lock:
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return False  # dying: the supervisor restarts it
        return True

    def _push_extra(self, force: bool = False) -> None:
        """The status fields the parent knows (cache_seq): sent when they changed."""
        if self.status_extra is None:
            return
        extra = self.status_extra()
        with self._lock:
            changed, self._extra = extra != self._extra, extra
        if changed or force:
            self._send({"extra": extra})

    def _spawn(self) -> subprocess.Popen[bytes]:
        config = {
            **self._config,
            "parent": os.getpid(),
            "log_level": logging.getLogger("sync").getEffectiveLevel(),
            "extra": self.status_extra() if self.status_extra else {},
        }
        # The same interpreter, cwd and environment as the daemon; the project this module
        # was imported from goes first on the path, so the child runs the same code.
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "sync.link_proc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        proc.stdin.flush()
        return proc

    def _supervise(self) -> None:
        delay = RESTART_MIN_S
        first = True
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = self._spawn()
            except OSError as err:
                log.error("cannot start the link process: %s", err)
                self._died(f"cannot start the link process: {err}")
            else:
                with self._lock:
                    self._proc = proc
                if self._stopping.is_set():  # stop() came while it was being spawned
                    self._send({"stop": True})
                if not first:
                    self.restarts += 1
                    if self.on_restart is not None:
                        self.on_restart()
                first = False
                code = self._run(proc)
                if self._stopping.is_set():
                    return
                log.error("link process %d exited (%s); restarting it", proc.pid, code)
                self._died(f"link process exited ({code}); restarting")
            if time.monotonic() - started > STABLE_S:
                delay = RESTART_MIN_S
            self._stopping.wait(delay)
            delay = min(RESTART_MAX_S, delay * 2)

    def _run(self, proc: subprocess.Popen[bytes]) -> int:
        """Read the child's lines until it exits; its exit status."""
        assert proc.stdout is not None and proc.stderr is not None
        errs = threading.Thread(
            target=_log_stderr, args=(proc.stderr,), name=f"link-proc-log-{proc.pid}"
        )
        errs.start()
        try:
            for line in proc.stdout:
                try:
                    self._line(json.loads(line))
                except Exception:  # a bad line or a failing callback must not end the reader
                    log.exception("link process line not handled: %r", line[:200])
        finally:
            code = proc.wait()
            errs.join()
            with self._lock:
                self._proc = None
                waiting = list(self._rotations)
            with self._write_lock:
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        with contextlib.suppress(OSError):  # a write left unflushed
                            stream.close()
            for n in waiting:
                self._resolve(n, False)
        return code

    def _line(self, doc: dict[str, Any]) -> None:
        if "status" in doc:
            with self._lock:
                self._status = doc["status"]
            self._push_extra()
        elif "down" in doc:
            d = doc["down"]
            down = Down(str(d["id"]), str(d["type"]), d["issued_at"], d["ttl_s"], d["body"])
            self.on_down(down)
        elif "refused" in doc:
            if self.on_refused is not None:
                self.on_refused(str(doc["refused"][0]), str(doc["refused"][1]))
        elif "rotated" in doc:
            self._resolve(int(doc["rotated"]), bool(doc["ok"]))

    def _resolve(self, n: int, ok: bool) -> None:
        with self._lock:
            fut = self._rotations.pop(n, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    def _died(self, error: str) -> None:
        with self._lock:
            self._status = {
                **self._status,
                "connected": False,
                "last_error": {"at": time.time(), "error": error},
            }


def _log_stderr(stream: IO[bytes]) -> None:
    """The child logs "LEVEL logger: message"; the level is kept (a traceback's lines follow
    the level of the line before them)."""
    level = logging.ERROR
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        head = line.split(" ", 1)[0]
        if head in _LEVELS and head.isupper():
            level = _LEVELS[head]
            line = line[len(head) + 1 :]
        child_log.log(level, "%s", line)
