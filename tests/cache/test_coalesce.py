"""The broadcast behind coalesced streams: late joiners replay from the start, and the upstream
stream runs exactly as long as someone listens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from proxy.cache.coalesce import Broadcast
from proxy.exchange import Reply


def source(gate: asyncio.Event) -> Reply:
    reply = Reply(200, sse=True)

    async def frames() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: 1\n\n"
            await gate.wait()
            yield b"data: [DONE]\n\n"
            reply.outcome = "complete"
        finally:
            if reply.outcome == "pending":
                reply.outcome = "aborted"

    reply.stream = frames()
    reply.outcome = "pending"
    return reply


async def test_a_follower_that_has_not_started_keeps_the_stream_alive() -> None:
    gate = asyncio.Event()
    ended: list[str] = []

    async def on_end(broadcast: Broadcast) -> None:
        ended.append(broadcast.source.outcome)

    broadcast = Broadcast(source(gate), on_end)
    lead_reply, follow_reply = Reply(200, sse=True), Reply(200, sse=True)
    lead = broadcast.subscribe(lead_reply)
    assert await anext(lead) == b"data: 1\n\n"
    follower = broadcast.subscribe(follow_reply)
    await lead.aclose()  # the leading client hangs up
    gate.set()
    assert [f async for f in follower] == [b"data: 1\n\n", b"data: [DONE]\n\n"]
    assert follow_reply.outcome == "complete"
    await asyncio.sleep(0)
    assert ended == ["complete"]


async def test_the_stream_stops_when_the_last_listener_leaves() -> None:
    gate = asyncio.Event()
    ended: list[str] = []

    async def on_end(broadcast: Broadcast) -> None:
        ended.append(broadcast.source.outcome)

    broadcast = Broadcast(source(gate), on_end)
    only = broadcast.subscribe(Reply(200, sse=True))
    await anext(only)
    await only.aclose()
    for _ in range(5):
        await asyncio.sleep(0)
    assert ended == ["aborted"] and broadcast.done
