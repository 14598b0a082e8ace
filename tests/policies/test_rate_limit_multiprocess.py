"""Four real sidecar processes sharing one Redis admit exactly the limit, for requests and tokens,
when three times the limit arrives at once spread over all of them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.tokens import TokenCounter
from tests.mock_upstream import MockUpstream
from tests.redis_server import redis_server_session, redis_url  # noqa: F401  (fixtures)
from tests.sidecar_processes import SidecarProcesses

pytestmark = pytest.mark.redis

PROCESSES = 4
REQUESTS = 20
TOKEN_REQUESTS = 10
BODY: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 40,
        "messages": [{"role": "user", "content": "count the requests that get through"}]}


def cost() -> int:
    return TokenCounter().count_request(BODY, BODY["model"]) + int(BODY["max_tokens"])


@pytest.fixture
def fleet(tmp_path: Path, mock: MockUpstream, redis_url: str) -> Iterator[SidecarProcesses]:  # noqa: F811
    config = tmp_path / "sidecar.toml"
    config.write_text(f"""
[[upstreams]]
name = "mock"
base_url = "{mock.base_url}"

[state]
backend = "redis"
url = "{redis_url}"

[[limits]]
name = "requests-shared"
match = {{ tag = "test=requests" }}
requests = {REQUESTS}
window = "1h"

[[limits]]
name = "tokens-shared"
match = {{ tag = "test=tokens" }}
tokens = {TOKEN_REQUESTS * cost()}
window = "1h"
""")
    with SidecarProcesses(config, PROCESSES) as processes:
        yield processes


async def burst(urls: list[str], count: int, tag: str) -> list[int]:
    """`count` requests at once, spread round-robin over the processes; their status codes."""
    headers = {"Authorization": "Bearer sk-shared", "x-sidecar-tags": f"test={tag}"}
    targets = itertools.islice(itertools.cycle(urls), count)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(url: str) -> int:
            async with session.post(f"{url}/v1/chat/completions", json=BODY,
                                    headers=headers) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one(url) for url in targets)))


def statuses(codes: list[int]) -> dict[int, int]:
    return {code: codes.count(code) for code in sorted(set(codes))}


async def test_shared_request_limit_is_exact(fleet: SidecarProcesses, mock: MockUpstream) -> None:
    codes = await burst(fleet.urls, 3 * REQUESTS, "requests")
    assert statuses(codes) == {200: REQUESTS, 429: 2 * REQUESTS}
    assert mock.count("/v1/chat/completions") == REQUESTS


async def test_shared_token_limit_is_exact(fleet: SidecarProcesses, mock: MockUpstream) -> None:
    prompt = cost() - BODY["max_tokens"]
    # real usage equals the estimate, so reconciliation cannot move the count while requests land
    mock.script("ok", prompt_tokens=prompt, completion_tokens=BODY["max_tokens"],
                times=3 * TOKEN_REQUESTS)
    codes = await burst(fleet.urls, 3 * TOKEN_REQUESTS, "tokens")
    assert statuses(codes) == {200: TOKEN_REQUESTS, 429: 2 * TOKEN_REQUESTS}
    assert mock.count("/v1/chat/completions") == TOKEN_REQUESTS

