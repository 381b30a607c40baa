"""One worker thread per device (and one for the databases), driven from the asyncio loop.

A port is never used by two threads: every call for a device goes through its runner's single
thread, in submission order. The loop awaits the result; a blocking driver call (a gate waiting
six seconds for a passage) blocks only its own device.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


class Runner:
    """A single-thread executor with a name. `call` from the loop; `submit` from anywhere."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"edge-{name}")
        self._closed = False

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on this runner's thread and await its result (exceptions propagate)."""
        if self._closed:
            raise RuntimeError(f"runner {self.name} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def submit(
        self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        if self._closed:
            raise RuntimeError(f"runner {self.name} is closed")
        return self._pool.submit(fn, *args, **kwargs)

    def run_sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """From a thread that is not the loop (CLI, tests): run on the runner's thread and wait."""
        return self.submit(fn, *args, **kwargs).result()

    def close(self, wait: bool = True) -> None:
        """Stop taking work; with `wait`, finish what was queued. Idempotent."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
