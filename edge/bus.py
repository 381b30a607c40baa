"""The daemon's internal event bus: decisions, passages, device alerts, occupancy, print results.

Publishers (loop tasks, or worker threads through `publish_threadsafe`) never block: each
subscriber has a bounded queue, and a subscriber that falls behind loses its oldest events (and is
told how many) rather than slowing a lane. Nothing durable travels only on the bus: what must reach
the cloud is written to the outbox first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    topic: str  # decision, passage, device, occupancy, print, locker, audit, lane, system
    data: dict[str, Any]
    seq: int = 0
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "seq": self.seq, "at": self.at, "data": self.data}


class Subscription:
    def __init__(self, bus: EventBus, topics: frozenset[str] | None, size: int) -> None:
        self._bus = bus
        self.topics = topics
        self._queue: deque[Event] = deque(maxlen=size)
        self._wake = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def _put(self, event: Event) -> None:
        if self.topics is not None and event.topic not in self.topics:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)
        self._wake.set()

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None on timeout or when the subscription is closed."""
        while not self._queue:
            if self.closed:
                return None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        return self._queue.popleft()

    def pending(self) -> list[Event]:
        out = list(self._queue)
        self._queue.clear()
        return out

    def close(self) -> None:
        self.closed = True
        self._bus._subs.discard(self)
        self._wake.set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event


class EventBus:
    def __init__(self, recent: int = 200) -> None:
        self._subs: set[Subscription] = set()
        self._seq = itertools.count(1)
        self.recent: deque[Event] = deque(maxlen=recent)
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, topics: set[str] | None = None, size: int = 1000) -> Subscription:
        sub = Subscription(self, frozenset(topics) if topics else None, size)
        self._subs.add(sub)
        return sub

    def publish(self, topic: str, **data: Any) -> Event:
        """From the loop's thread."""
        event = Event(topic, data, next(self._seq))
        self.recent.append(event)
        for sub in list(self._subs):
            sub._put(event)
        return event

    def publish_threadsafe(self, topic: str, **data: Any) -> None:
        """From a worker thread: hands the event to the loop."""
        if self._loop is None or self._loop.is_closed():
            log.debug("bus not bound; event %s dropped", topic)
            return
        self._loop.call_soon_threadsafe(lambda: self.publish(topic, **data))

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
