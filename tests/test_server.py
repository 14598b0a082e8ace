"""What a client sees from the sidecar itself: errors, headers, limits, health, faults."""

from __future__ import annotations

import asyncio
import logging

import httpx
import openai
import pytest
from aiohttp import web

from tests.harness import Sidecar

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def post(sidecar: Sidecar, path: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(sidecar.url + path, content=content, headers=headers, timeout=10)


def assert_envelope(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return error


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"", None),
    (b"\xff\xfe{}", None),
    (b"[1, 2]", None),
    (b'{"model": 3, "messages": []}', "model"),
    (b'{"model": "gpt-4o", "messages": "hi"}', "messages"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "stream"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}',
     "max_tokens"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": true}',
     "temperature"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "gpt-4o", "messages": ["hi"]}', "messages[0]"),
])
def test_bad_requests_get_400_naming_the_param(sidecar: Sidecar, body: bytes,
                                               param: str | None) -> None:
    response = post(sidecar, "/v1/chat/completions", body, **{"Content-Type": "application/json"})
    error = assert_envelope(response, 400, param)
    assert error["type"] == "invalid_request_error"
    assert sidecar.mock.count() == 0


def test_bad_request_raises_the_sdk_bad_request_error(sidecar: Sidecar) -> None:
    with pytest.raises(openai.BadRequestError):
        sidecar.client().chat.completions.create(model="gpt-4o", messages="hi")  # type: ignore[arg-type]


def test_body_over_the_limit_gets_413(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar("[server]\nmax_body_size = \"1KB\"\n")
    big = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"a" * 4096 + b'"}]}'
    assert_envelope(post(sidecar, "/v1/chat/completions", big), 413)
    assert sidecar.mock.count() == 0


def test_request_id_is_propagated_or_made_and_overhead_reported(sidecar: Sidecar) -> None:
    response = post(sidecar, "/v1/chat/completions", b'{"model": "gpt-4o", "messages": '
                    b'[{"role": "user", "content": "x"}]}', **{"x-request-id": "req-123"})
    assert response.headers["x-request-id"] == "req-123"
    assert float(response.headers["x-sidecar-overhead-ms"]) >= 0
    assert response.headers["x-sidecar-upstream"] == "mock"
    assert sidecar.mock.received[-1].headers["X-Request-Id"] == "req-123"
    made = post(sidecar, "/v1/chat/completions", b"{}")
    assert len(made.headers["x-request-id"]) >= 16
    ids = {post(sidecar, "/v1/chat/completions", b"{}").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5 and made.headers["x-request-id"] not in ids  # every request its own


def test_hop_by_hop_headers_dropped_host_rewritten_traceparent_kept(sidecar: Sidecar) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    httpx.post(sidecar.url + "/v1/chat/completions", json=CHAT, headers={
        "Connection": "keep-alive, x-secret-hop", "Proxy-Authorization": "Basic abc",
        "traceparent": traceparent, "x-sidecar-user": "alice", "TE": "trailers",
    })
    seen = sidecar.mock.received[-1].headers
    assert seen["traceparent"] == traceparent
    assert "Proxy-Authorization" not in seen and "TE" not in seen
    assert "x-sidecar-user" not in seen
    assert seen["Host"] == sidecar.mock.base_url.split("/")[2]


def test_client_key_passes_through_when_no_upstream_key(sidecar: Sidecar) -> None:
    sidecar.client(api_key="sk-client-own").chat.completions.create(**CHAT)
    assert sidecar.mock.received[-1].headers["Authorization"] == "Bearer sk-client-own"


def test_upstream_key_is_injected_and_never_leaks(start_sidecar, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    sidecar = start_sidecar('[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\n'
                            'api_key = "${UPSTREAM_SECRET}"\nretries = 0\n',
                            env={"UPSTREAM_SECRET": "sk-up-xyz"})
    sidecar.client(api_key="sk-client").chat.completions.create(**CHAT)
    assert sidecar.mock.received[-1].headers["Authorization"] == "Bearer sk-up-xyz"
    sidecar.mock.fault("reset", times=1)
    failed = httpx.post(sidecar.url + "/v1/chat/completions", json=CHAT)
    assert failed.status_code == 502
    assert "sk-up-xyz" not in failed.text and "sk-up-xyz" not in caplog.text
    assert "sk-up-xyz" not in str(sidecar.services.config)


def test_unreachable_upstream_is_502_naming_it(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[[upstreams]]\nname = "down"\nbase_url = "http://127.0.0.1:9/v1"\n')
    error = assert_envelope(httpx.post(sidecar.url + "/v1/chat/completions", json=CHAT), 502)
    assert "'down'" in error["message"] and error["code"] == "upstream_unreachable"


def test_upstream_timeout_is_504(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[[upstreams]]\nname = "slow"\nbase_url = "{mock}"\n'
                            '[upstreams.timeouts]\nfirst_byte = "300ms"\n')
    sidecar.mock.fault("hang", times=1)
    error = assert_envelope(httpx.post(sidecar.url + "/v1/chat/completions", json=CHAT), 504)
    assert "'slow'" in error["message"]


def test_unknown_v1_paths_pass_through_raw(sidecar: Sidecar) -> None:
    response = httpx.get(sidecar.url + "/v1/nonexistent-thing?x=1")
    assert response.status_code == 200  # the mock echoes unknown paths
    assert response.json()["path"] == "/v1/nonexistent-thing"
    assert sidecar.mock.received[-1].query["x"] == "1"


def test_non_json_upstream_error_is_wrapped_in_the_envelope(start_sidecar, loop_thread) -> None:  # type: ignore[no-untyped-def]
    async def html_502(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    async def serve() -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", html_502)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    runner, url = loop_thread.run(serve())
    try:
        sidecar = start_sidecar(f'[[upstreams]]\nname = "lb"\nbase_url = "{url}"\n')
        error = assert_envelope(httpx.post(sidecar.url + "/v1/chat/completions", json=CHAT), 502)
        assert "'lb'" in error["message"] and "Bad Gateway" in error["message"]
    finally:
        loop_thread.run(runner.cleanup())


def test_stream_dropped_mid_way_raises_in_the_sdk_not_a_hang(sidecar: Sidecar) -> None:
    sidecar.mock.fault("drop_mid_stream", times=1, after=2)
    stream = sidecar.client(timeout=10).chat.completions.create(**CHAT, stream=True)
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert "mid-stream" in str(raised.value.message)


def test_malformed_sse_becomes_an_error_event(sidecar: Sidecar) -> None:
    sidecar.mock.fault("malformed_sse", times=1, after=1)
    with pytest.raises(openai.APIError):
        list(sidecar.client(timeout=10).chat.completions.create(**CHAT, stream=True))


def test_responses_stream_broken_raises_too(sidecar: Sidecar) -> None:
    sidecar.mock.fault("drop_mid_stream", times=1, after=2)
    with pytest.raises(openai.APIError):
        list(sidecar.client(timeout=10).responses.create(model="gpt-4o", input="hi", stream=True))


async def _slow_stream_upstream(ended: asyncio.Event) -> tuple[web.AppRunner, str]:
    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(100):
                await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n')
                await asyncio.sleep(0.1)
        finally:
            ended.set()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/v1"


def test_client_disconnect_cancels_the_upstream_stream(start_sidecar, loop_thread) -> None:  # type: ignore[no-untyped-def]
    ended = asyncio.Event()
    runner, url = loop_thread.run(_slow_stream_upstream(ended))
    try:
        sidecar = start_sidecar(f'[[upstreams]]\nname = "slow"\nbase_url = "{url}"\n')
        with httpx.stream("POST", sidecar.url + "/v1/chat/completions",
                          json={**CHAT, "stream": True}) as response:
            next(response.iter_lines())
        # The 10 s upstream stream ends within a couple of seconds: the sidecar closed it.
        loop_thread.run(asyncio.wait_for(ended.wait(), 5))
    finally:
        loop_thread.run(runner.cleanup())


def test_health_and_readiness(sidecar: Sidecar) -> None:
    assert httpx.get(sidecar.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(sidecar.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_readyz_fails_when_redis_is_unreachable(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:9/0"\n')
    ready = httpx.get(sidecar.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["state"] is False


def test_unknown_model_route_is_404_model_not_found(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[[upstreams]]\nname = "only"\nbase_url = "{mock}"\n'
                            'models = ["gpt-4o*"]\n')
    with pytest.raises(openai.NotFoundError):
        sidecar.client().chat.completions.create(model="claude-3", messages=CHAT["messages"])
    sidecar.client().chat.completions.create(**{**CHAT, "model": "gpt-4o-mini"})


def test_first_matching_upstream_routes(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(
        '[[upstreams]]\nname = "mini"\nbase_url = "{mock}"\nmodels = ["gpt-4o-mini*"]\n'
        '[[upstreams]]\nname = "rest"\nbase_url = "{mock}"\nheaders = { x-route = "rest" }\n')
    first = post(sidecar, "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": '
                 b'[{"role": "user", "content": "x"}]}')
    second = post(sidecar, "/v1/chat/completions", b'{"model": "gpt-4o", "messages": '
                  b'[{"role": "user", "content": "x"}]}')
    assert first.headers["x-sidecar-upstream"] == "mini"
    assert second.headers["x-sidecar-upstream"] == "rest"
    assert sidecar.mock.received[-1].headers["x-route"] == "rest"


def test_admin_api_is_off_without_an_admin_key(sidecar: Sidecar) -> None:
    assert_envelope(httpx.get(sidecar.url + "/admin/spend"), 404)


def test_admin_api_needs_the_admin_key(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[server]\nadmin_key = "adm-secret"\n')
    assert_envelope(httpx.get(sidecar.url + "/admin/nothing"), 401)
    wrong = httpx.get(sidecar.url + "/admin/nothing", headers={"Authorization": "Bearer nope"})
    assert_envelope(wrong, 401)
    right = httpx.get(sidecar.url + "/admin/nothing",
                      headers={"Authorization": "Bearer adm-secret"})
    assert_envelope(right, 404)
