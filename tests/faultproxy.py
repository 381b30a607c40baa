"""A TCP fault proxy for the sync tests and benches: stdlib asyncio on its own thread.

toxiproxy is not installable here and tc/iptables need CAP_NET_ADMIN
(../shared/design/SYNC_RESEARCH.md section 4), so the box talks to the broker through this:

    with FaultProxy(broker.host, broker.port) as proxy:
        link = Link(..., host=proxy.host, port=proxy.port)
        proxy.set_mode("blackhole")

TLS verifies through it: the box still talks TLS to mosquitto, and the broker certificate's SAN
holds 127.0.0.1 (tests/broker.py).

Modes (set_mode, from any thread; applied before it returns):
- "pass": bytes flow both ways.
- "blackhole": a partition. Nothing flows either way and nothing is closed: bytes (and a peer's
  close) are held, and delivered on heal if the connection is still alive. New connections are
  accepted but not forwarded (the upstream connection is opened on heal).
- "reset": every live connection is reset (RST, both sides) and new ones are reset at accept.
- "drop_down": box -> broker flows, broker -> box bytes are discarded (PUBACKs and the hub's acks
  are lost). Leaving drop_down resets the connections that lost bytes: their TLS stream is broken.

shape(rtt_ms, rate_bps): rtt/2 of latency each way, and a token bucket per direction per
connection (bits per second). reset_all(): RST every live connection now, whatever the mode.
Counters: `connections` (live now), `accepted` (every TCP accept, those reset at accept too),
`bytes_up` / `bytes_down` (delivered), `dropped_down` (discarded by drop_down).

Each connection is two readers (which read ahead into a bounded buffer, so a slow or held
direction pushes back on its sender) and two writers (which apply the mode, the delay and the
rate at delivery time). Everything runs on the proxy's loop; the counters are plain ints.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

MODES = ("pass", "blackhole", "reset", "drop_down")
CHUNK = 16 * 1024
BUFFER_LIMIT = 512 * 1024  # read ahead per direction before the sender feels backpressure
CALL_TIMEOUT_S = 10.0
BURST_S = 0.005  # token bucket depth, in seconds of the configured rate
_RESET = None  # the reader's marker: the peer reset the connection

T = TypeVar("T")


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Direction:
    """One direction of one connection: read ahead into a bounded buffer, deliver later."""

    def __init__(self, name: str) -> None:
        self.name = name  # "up" (box -> broker) or "down"
        self.items: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.buffered = 0
        self.ready = asyncio.Event()  # items to deliver
        self.room = asyncio.Event()  # below BUFFER_LIMIT
        self.room.set()


class _Conn:
    def __init__(self, box: asyncio.StreamWriter) -> None:
        self.box = box
        self.broker: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []  # its readers and writers
        self.corrupted = False  # drop_down discarded bytes of its stream
        self.closed = False

    def abort(self) -> None:
        """RST both sides."""
        if not self.closed:
            self.closed = True
            _abort(self.box)
            if self.broker is not None:
                _abort(self.broker)
            self._stop_tasks()

    def close(self) -> None:
        """FIN both sides, after what their transports still buffer."""
        if not self.closed:
            self.closed = True
            self.box.close()
            if self.broker is not None:
                self.broker.close()
            self._stop_tasks()

    def _stop_tasks(self) -> None:
        # They may be waiting on a held (blackholed) delivery or on buffer room: nothing
        # else would wake them.
        me = asyncio.current_task()
        for task in self.tasks:
            if task is not me:
                task.cancel()


class FaultProxy:
    """Listen on (listen_host, a free port) and forward to (target_host, target_port)."""

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"
    ) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host = listen_host
        self.port = 0
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.dropped_down = 0  # bytes discarded by drop_down
        self._mode = "pass"
        self._rtt_s = 0.0
        self._rate_bps: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._flowing: asyncio.Event | None = None  # cleared in blackhole
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- control (any thread) ----------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def mode(self) -> str:
        return self._mode

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Reset every connection, stop listening, join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                try:
                    self._call(self._shutdown())
                finally:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join(CALL_TIMEOUT_S)
        finally:
            self._thread = self._loop = None
            loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        self._call(self._set_mode(mode))

    def shape(self, rtt_ms: float = 0.0, rate_bps: float | None = None) -> None:
        """Latency rtt_ms/2 each way; rate_bps per direction per connection (None: unlimited)."""
        if rtt_ms < 0 or (rate_bps is not None and rate_bps <= 0):
            raise ValueError("rtt_ms >= 0 and rate_bps > 0 (or None)")

        async def apply() -> None:
            self._rtt_s, self._rate_bps = rtt_ms / 1000.0, rate_bps

        self._call(apply())

    def reset_all(self) -> None:
        async def apply() -> None:
            for conn in list(self._conns):
                conn.abort()

        self._call(apply())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("proxy not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL_TIMEOUT_S)

    # -- the loop ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _set_mode(self, mode: str) -> None:
        old, self._mode = self._mode, mode
        assert self._flowing is not None
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "reset":
            for conn in list(self._conns):
                conn.abort()
        elif old == "drop_down" and mode != "drop_down":
            for conn in [c for c in self._conns if c.corrupted]:
                conn.abort()
        if old != mode:
            log.info("fault proxy :%d %s -> %s (%d live)", self.port, old, mode, len(self._conns))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, box_r: asyncio.StreamReader, box_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.accepted += 1
        if self._mode == "reset":
            _abort(box_w)
            return
        conn = _Conn(box_w)
        self._conns.add(conn)
        try:
            await self._forward(conn, box_r)
        except asyncio.CancelledError:
            pass  # the proxy is closing (asyncio 3.11 would log a cancelled handler as an error)
        finally:
            conn.abort()  # a no-op after a clean close
            self._conns.discard(conn)

    async def _forward(self, conn: _Conn, box_r: asyncio.StreamReader) -> None:
        assert self._flowing is not None
        await self._flowing.wait()  # blackhole: accepted, not forwarded (yet)
        if conn.closed:
            return
        try:
            broker_r, broker_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError as err:
            log.info("fault proxy: upstream %s refused: %s", self.target_port, err)
            conn.abort()
            return
        conn.broker = broker_w
        if conn.closed:  # reset while connecting
            _abort(broker_w)
            return
        up, down = _Direction("up"), _Direction("down")
        conn.tasks = [
            self._spawn(self._read(conn, box_r, up)),
            self._spawn(self._deliver(conn, up, broker_w)),
            self._spawn(self._read(conn, broker_r, down)),
            self._spawn(self._deliver(conn, down, conn.box)),
        ]
        await asyncio.wait(conn.tasks)
        for t in conn.tasks:
            if not t.cancelled() and t.exception() is not None:
                log.error("fault proxy: connection task failed", exc_info=t.exception())

    async def _read(self, conn: _Conn, reader: asyncio.StreamReader, d: _Direction) -> None:
        loop = asyncio.get_running_loop()
        while not conn.closed:
            try:
                data: bytes | None = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = _RESET
            d.items.append((loop.time(), data))
            d.ready.set()
            if not data:
                return  # EOF or reset: delivered in turn
            d.buffered += len(data)
            if d.buffered >= BUFFER_LIMIT:
                d.room.clear()
                await d.room.wait()

    async def _deliver(self, conn: _Conn, d: _Direction, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        assert self._flowing is not None
        next_t = 0.0  # token bucket, as the time the bucket is paid up to
        while not conn.closed:
            if not d.items:
                d.ready.clear()
                await d.ready.wait()
                continue
            arrived, data = d.items[0]
            # Held while partitioned, then for its share of the round trip.
            while not conn.closed:
                await self._flowing.wait()
                wait = arrived + self._rtt_s / 2 - loop.time()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if conn.closed:
                return
            d.items.popleft()
            if data is _RESET:
                conn.abort()
                return
            if not data:
                conn.close()  # the peer closed: close both sides once all came through
                return
            d.buffered -= len(data)
            if d.buffered < BUFFER_LIMIT:
                d.room.set()
            if d.name == "down" and self._mode == "drop_down":
                conn.corrupted = True
                self.dropped_down += len(data)
                continue
            rate = self._rate_bps
            # Paced in slices of about 10 ms at the configured rate.
            step = CHUNK if rate is None else max(1024, int(rate / 8 * 0.01))
            for off in range(0, len(data), step):
                piece = data[off : off + step]
                if rate is not None:
                    now = loop.time()
                    next_t = max(next_t, now - BURST_S) + len(piece) * 8 / rate
                    if next_t > now:
                        await asyncio.sleep(next_t - now)
                if conn.closed:
                    return
                writer.write(piece)
                if d.name == "up":
                    self.bytes_up += len(piece)
                else:
                    self.bytes_down += len(piece)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                conn.abort()
                return
