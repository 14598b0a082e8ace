"""Graceful shutdown: stop accepting, let in-flight requests finish, cut what remains at a deadline.

At the deadline a waiting JSON request gets a 503 in the envelope and a stream gets a final error
event, so no accepted request ends without a word.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

log = logging.getLogger("proxy.server")


class Drain:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tasks: set[asyncio.Task[object]] = set()
        self.deadline_passed = False

    def track(self, task: asyncio.Task[object]) -> None:
        self.tasks.add(task)

    def untrack(self, task: asyncio.Task[object]) -> None:
        self.tasks.discard(task)

    async def begin(self, app: web.Application) -> None:
        """on_shutdown: the listener is closed; give in-flight work `timeout` seconds."""
        if self.tasks:
            log.info("draining %d in-flight request(s) for up to %gs", len(self.tasks), self.timeout)
        asyncio.get_running_loop().call_later(self.timeout, self._cut)

    def _cut(self) -> None:
        self.deadline_passed = True
        for task in list(self.tasks):
            task.cancel()

    def absorb(self) -> bool:
        """In a handler that caught CancelledError: True (and uncancelled) if it was the drain."""
        task = asyncio.current_task()
        if self.deadline_passed and task is not None:
            task.uncancel()
            return True
        return False
