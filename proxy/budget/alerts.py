"""Soft budget alerts: logged, and POSTed as JSON to a webhook by a background worker.

Posting never blocks a request: alerts wait in a bounded queue and are retried with backoff when
the webhook fails (timeouts, 429, 5xx); a full queue drops the post (the log line remains).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass

import aiohttp

log = logging.getLogger("proxy.budget")


@dataclass(frozen=True, slots=True)
class Alert:
    """A budget bucket crossed one of its `alert_at` fractions in one period."""

    budget: str
    bucket: str
    period: str
    period_label: str
    threshold: float
    spent_usd: float
    limit_usd: float
    resets_at: str | None
    webhook: str

    def payload(self) -> dict[str, object]:
        body = asdict(self)
        del body["webhook"]
        return {"type": "budget.threshold_crossed", **body}


class Alerter:
    def __init__(self, retries: int = 4, backoff: float = 0.5, timeout: float = 5.0,
                 queue_size: int = 1000) -> None:
        self._retries = retries
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None

    def send(self, alert: Alert) -> None:
        log.warning("budget %r (%s, %s %s) crossed %g%%: $%.4f of $%.2f spent", alert.budget,
                    alert.bucket, alert.period, alert.period_label, alert.threshold * 100,
                    alert.spent_usd, alert.limit_usd)
        if not alert.webhook:
            return
        if self._worker is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._worker = asyncio.create_task(self._run())
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            log.error("budget alert webhook queue is full; dropped an alert for %r", alert.budget)

    async def _run(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self._post(alert)
            finally:
                self._queue.task_done()

    async def _post(self, alert: Alert) -> None:
        assert self._session is not None
        for attempt in range(self._retries + 1):
            try:
                async with self._session.post(alert.webhook, json=alert.payload()) as response:
                    if response.status < 300:
                        return
                    if response.status < 500 and response.status != 429:
                        log.error("budget alert webhook answered %s; not retried", response.status)
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if attempt < self._retries:
                await asyncio.sleep(self._backoff * 2**attempt)
        log.error("budget alert webhook failed %d times; alert for %r dropped",
                  self._retries + 1, alert.budget)

    async def aclose(self, grace: float = 2.0) -> None:
        """Give queued alerts `grace` seconds to go out, then stop."""
        if self._worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self._session is not None:
            await self._session.close()
