"""Chaos: a primary failing 30% of the time (5xx, timeouts, resets) behind a healthy fallback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from tests.harness import LoopThread
from tests.mock_upstream import MockUpstream

CONFIG = '''
[routing]
backoff_base = "5ms"
backoff_max = "20ms"

[[upstreams]]
name = "primary"
base_url = "{mock}"
retries = 1
{fallbacks}
[upstreams.timeouts]
first_byte = "300ms"
[upstreams.breaker]
enabled = false

[[upstreams]]
name = "backup"
base_url = "BACKUP"
models = []
'''


@pytest.fixture
def backup(loop_thread: LoopThread) -> Iterator[MockUpstream]:
    upstream = MockUpstream()
    loop_thread.run(upstream.start())
    yield upstream
    loop_thread.run(upstream.aclose())


async def one(client: openai.AsyncOpenAI, i: int) -> str:
    prompt = f"request number {i}"
    if i % 4 == 0:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    else:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        text = answer.choices[0].message.content or ""
    assert text == f"Echo: {prompt}", "no duplicated or spliced answer"
    return text


async def fire(client: openai.AsyncOpenAI, count: int) -> list[BaseException | str]:
    gate = asyncio.Semaphore(32)

    async def guarded(i: int) -> str:
        async with gate:
            return await one(client, i)

    return await asyncio.gather(*(guarded(i) for i in range(count)), return_exceptions=True)


async def test_1000_requests_see_no_error_with_a_healthy_fallback(start_sidecar, backup) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(CONFIG.replace("BACKUP", backup.base_url)
                            .replace("{fallbacks}", 'fallbacks = ["backup"]'))
    sidecar.mock.chaos(0.3, ["status_5xx", "hang", "reset"])
    client = sidecar.async_client(max_retries=0, timeout=30)
    results = await fire(client, 1000)
    await client.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    faults = sidecar.mock.fault_counts()
    assert set(faults) == {"status_5xx", "hang", "reset"} and sum(faults.values()) > 200
    assert backup.count("/v1/chat/completions") > 0


async def test_without_a_fallback_every_failure_is_a_proper_error(start_sidecar, backup) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(CONFIG.replace("BACKUP", backup.base_url).replace("{fallbacks}", "")
                            .replace("retries = 1", "retries = 0"))
    sidecar.mock.chaos(0.3, ["status_5xx", "hang", "reset"])
    client = sidecar.async_client(max_retries=0, timeout=30)
    results = await fire(client, 300)
    await client.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) > 30
    for error in errors:
        assert isinstance(error, openai.APIStatusError), f"not an HTTP error: {error!r}"
        assert error.status_code in (500, 502, 503, 504)
        body = error.body
        assert isinstance(body, dict) and {"message", "type", "code"} <= set(body)
