"""Budgets end to end: costs on answers and streams, refusals, concurrency, restarts, alerts, admin."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxy.budget.periods import Period, window_at
from proxy.exchange import Endpoint, Exchange, Identity, Reply
from proxy.pipeline import PolicyContext
from proxy.policies.budget import Config, create
from proxy.pricing import ModelPrice
from proxy.settings import Settings, StateConfig
from proxy.state import StateBackend
from proxy.tokens import TokenCounter
from tests.conftest import ManualClock, StartSidecar
from tests.mock_upstream import MockUpstream
from tests.redis_server import (  # noqa: F401  (fixtures)
    RedisServer,
    redis_server,
    redis_server_session,
    redis_url,
)
from tests.sidecar_processes import SidecarProcesses

ADMIN = {"Authorization": "Bearer admin-secret"}
# Round prices make costs easy to check: $0.10 per input token, $0.20 per output token.
PRICES = 'prices = { "gpt-4o-mini" = { input = 100000.0, output = 200000.0 } }'
# For the bursts: output 20 times the input price, as on OpenAI's list ($0.01 and $0.20 a token).
# Each burst answer costs 7 * 0.01 + 5 * 0.2 = $1.07 (the mock counts 3 + 4 words of prompt and
# answers "Echo: hello number N now", 5 words); the cap is worth 50 of them.
BURST_PRICES = 'prices = { "gpt-4o-mini" = { input = 10000.0, output = 200000.0 } }'
BURST_COST = 1.07
BURST_CAP = 50 * BURST_COST


def budget_toml(usd: float, *, period: str = "day", per: str = "team", extra: str = "",
                prices: str = PRICES) -> str:
    return f"""
[server]
admin_key = "admin-secret"

[[budgets]]
name = "team-budget"
per = "{per}"
period = "{period}"
usd = {usd}
{prices}
{extra}
"""


def chat(base: str, text: str = "hello there", team: str = "search", max_tokens: int | None = 5,
         **body: Any) -> httpx.Response:
    """A chat request; with max_tokens 5 it reserves at most $1.80 and costs $1.10 (2 words)."""
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **body}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    headers = {"Authorization": "Bearer sk-test", "x-sidecar-team": team,
               "x-sidecar-tags": "project=atlas"}
    return httpx.post(f"{base}/v1/chat/completions", json=payload, headers=headers, timeout=10)


def spend(base: str, **query: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/admin/spend", params=query, headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def bucket_spend(base: str, bucket: str = "team=search") -> float:
    for budget in spend(base):
        for row in budget["buckets"]:
            if row["bucket"] == bucket:
                return float(row["spent_usd"])
    return 0.0


def test_a_json_answer_carries_its_cost(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(100))
    answer = chat(sidecar.url, "hello there")
    usage = answer.json()["usage"]
    # the mock: prompt = 3 + 2 words, completion = "Echo: hello there" = 3 words
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (5, 3)
    assert float(answer.headers["x-sidecar-cost-usd"]) == pytest.approx(5 * 0.1 + 3 * 0.2)
    assert bucket_spend(sidecar.url) == pytest.approx(1.1)


def test_streamed_spend_equals_non_streamed_spend(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(100))
    client = sidecar.client(default_headers={"x-sidecar-team": "search"})
    messages: Any = [{"role": "user", "content": "count the stars tonight"}]
    plain = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages,
                                                             max_tokens=10)
    json_cost = float(plain.headers["x-sidecar-cost-usd"])
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, max_tokens=10,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.model_extra is not None
    assert usage.model_extra["cost_usd"] == pytest.approx(json_cost)
    # a client that did not ask for usage sees no usage chunk, and is charged all the same
    quiet = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                max_tokens=10))
    assert all(chunk.usage is None for chunk in quiet)
    assert bucket_spend(sidecar.url) == pytest.approx(3 * json_cost)


def test_responses_api_streamed_and_not_cost_the_same(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(100))
    client = sidecar.client(default_headers={"x-sidecar-team": "search"})
    plain = client.responses.with_raw_response.create(model="gpt-4o-mini", input="name three stars",
                                                      max_output_tokens=10)
    json_cost = float(plain.headers["x-sidecar-cost-usd"])
    assert json_cost > 0
    events = list(client.responses.create(model="gpt-4o-mini", input="name three stars",
                                          max_output_tokens=10, stream=True))
    usage = events[-1].response.usage  # type: ignore[union-attr]
    assert usage is not None and usage.model_extra is not None
    assert usage.model_extra["cost_usd"] == pytest.approx(json_cost)
    assert bucket_spend(sidecar.url) == pytest.approx(2 * json_cost)


def test_exhausted_budget_refuses_in_openais_envelope(start_sidecar: StartSidecar,
                                                      clock: ManualClock) -> None:
    sidecar = start_sidecar(budget_toml(2.0), clock=clock)
    assert chat(sidecar.url).status_code == 200  # $1.10 spent
    refused = chat(sidecar.url)
    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "team-budget" in error["message"] and "team=search" in error["message"]
    assert "day (2026-01-01)" in error["message"]
    assert "2026-01-02T00:00:00Z" in error["message"]
    # the SDK maps it to a non-retried RateLimitError
    client = sidecar.client(max_retries=3, default_headers={"x-sidecar-team": "search"})
    sent = sidecar.mock.count()
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                       messages=[{"role": "user", "content": "hello there"}])
    assert raised.value.code == "budget_exceeded"
    assert sidecar.mock.count() == sent
    # another team has its own bucket
    assert chat(sidecar.url, team="ads").status_code == 200


def test_reservation_uses_max_tokens_so_a_request_that_may_not_fit_is_refused(
        start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(3.0))
    # without max_tokens the default 4096-token output cap is reserved: far above $3
    refused = chat(sidecar.url, max_tokens=None)
    assert refused.status_code == 429 and "may cost up to $820.0000" in refused.json()["error"]["message"]
    answer = chat(sidecar.url, max_tokens=5)
    assert answer.status_code == 200
    assert bucket_spend(sidecar.url) == pytest.approx(1.1)


def test_near_the_cap_a_long_prompt_is_judged_on_its_token_count(
        start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(10.0))
    text = " ".join(["hello"] * 40)  # 40 tokens, 239 bytes
    bound = (TokenCounter().count_request({"messages": [{"role": "user", "content": text}]})
             * 0.1 + 5 * 0.2)
    assert bound < 10.0 < len(text) * 0.1  # the body's length would not fit, its tokens do
    assert chat(sidecar.url, text).status_code == 200
    refused = chat(sidecar.url, text)
    assert refused.status_code == 429
    assert f"may cost up to ${bound:.4f}" in refused.json()["error"]["message"]


async def test_500_simultaneous_requests_never_overspend(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(BURST_CAP, prices=BURST_PRICES))
    statuses = await burst([sidecar.url], 500)
    assert set(statuses) <= {200, 429}
    spent = bucket_spend(sidecar.url)
    assert spent == pytest.approx(statuses.count(200) * BURST_COST)
    assert 0.8 * BURST_CAP <= spent <= BURST_CAP


async def burst(urls: list[str], count: int) -> list[int]:
    """`count` simultaneous chat requests spread over `urls`; their statuses."""
    body = {"model": "gpt-4o-mini", "max_tokens": 5}
    headers = {"Authorization": "Bearer sk-test", "x-sidecar-team": "search"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> int:
            payload = {**body, "messages": [{"role": "user", "content": f"hello number {i:03d} now"}]}
            async with session.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=payload,
                                    headers=headers) as response:
                if response.status == 429:
                    assert (await response.json())["error"]["code"] == "budget_exceeded"
                return response.status

        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 60)


def test_spend_survives_a_restart_with_memory_state(start_sidecar: StartSidecar) -> None:
    first = start_sidecar(budget_toml(3.0))
    assert chat(first.url).status_code == 200
    assert chat(first.url).status_code == 200
    first.stop()
    second = start_sidecar(budget_toml(3.0))
    assert bucket_spend(second.url) == pytest.approx(2.2)
    assert chat(second.url, max_tokens=3).status_code == 429


def test_spend_survives_a_restart_with_redis_state(start_sidecar: StartSidecar,
                                                   redis_url: str) -> None:  # noqa: F811
    toml = budget_toml(3.0) + f'\n[state]\nbackend = "redis"\nurl = "{redis_url}"\n'
    first = start_sidecar(toml)
    assert chat(first.url).status_code == 200
    assert chat(first.url).status_code == 200
    first.stop()
    second = start_sidecar(toml)
    assert bucket_spend(second.url) == pytest.approx(2.2)
    assert chat(second.url, max_tokens=3).status_code == 429


def test_unknown_model_is_refused_under_a_hard_budget(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(100))
    answer = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=10,
                        headers={"x-sidecar-team": "search"},
                        json={"model": "mystery-7b", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("model_price_unknown", "model")
    assert "mystery-7b" in error["message"]
    assert sidecar.mock.count("/v1/chat/completions") == 0


def test_unknown_model_is_charged_the_default_price_under_a_soft_budget(
        start_sidecar: StartSidecar) -> None:
    extra = "hard = false\ndefault_price = { input = 1000000.0, output = 1000000.0 }"
    sidecar = start_sidecar(budget_toml(1.0, extra=extra))
    for _ in range(2):  # soft: over the cap, still answered
        answer = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=10,
                            headers={"x-sidecar-team": "search"},
                            json={"model": "mystery-7b",
                                  "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        # prompt 4 + completion 2 tokens at $1 each
        assert float(answer.headers["x-sidecar-cost-usd"]) == pytest.approx(6.0)
    assert bucket_spend(sidecar.url) == pytest.approx(12.0)


def test_period_rollover_with_an_injected_clock(start_sidecar: StartSidecar,
                                                clock: ManualClock) -> None:
    sidecar = start_sidecar(budget_toml(2.0, extra='timezone = "Europe/Paris"'), clock=clock)
    clock.advance(22 * 3600 + 30 * 60)  # 2026-01-01 23:30 in Paris (22:30 UTC)
    assert chat(sidecar.url).status_code == 200
    refused = chat(sidecar.url)
    assert refused.status_code == 429
    assert "2026-01-01T23:00:00Z" in refused.json()["error"]["message"]  # Paris midnight
    clock.advance(31 * 60)  # 00:01 on 2 January in Paris: a new day
    assert chat(sidecar.url).status_code == 200
    assert spend(sidecar.url)[0]["period_label"] == "2026-01-02"
    assert bucket_spend(sidecar.url) == pytest.approx(1.1)
    past = spend(sidecar.url, period_label="2026-01-01")[0]
    assert past["buckets"][0]["spent_usd"] == pytest.approx(1.1) and past["resets_at"] is None


def test_month_and_total_periods(start_sidecar: StartSidecar, clock: ManualClock) -> None:
    monthly = start_sidecar(budget_toml(2.0, period="month"), clock=clock)
    assert chat(monthly.url).status_code == 200
    clock.advance(30 * 86400)  # 31 January: same month
    assert chat(monthly.url).status_code == 429
    clock.advance(86400)  # 1 February
    assert chat(monthly.url).status_code == 200
    monthly.stop()
    total = start_sidecar(budget_toml(2.0, period="total", per="user"), clock=clock, name="t.toml")
    ok = httpx.post(f"{total.url}/v1/chat/completions", timeout=10,
                    headers={"x-sidecar-user": "ann"},
                    json={"model": "gpt-4o-mini", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "a b"}]})
    assert ok.status_code == 200
    clock.advance(400 * 86400)
    again = httpx.post(f"{total.url}/v1/chat/completions", timeout=10,
                       headers={"x-sidecar-user": "ann"},
                       json={"model": "gpt-4o-mini", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "a b"}]})
    assert again.status_code == 429
    assert "does not reset" in again.json()["error"]["message"]


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@settings(max_examples=300, deadline=None)
@given(now=st.floats(1.6e9, 2.2e9), period=st.sampled_from(["day", "week", "month"]),
       zone=st.sampled_from(ZONES))
def test_periods_tile_the_calendar(now: float, period: Period, zone: str) -> None:
    tz = ZoneInfo(zone)
    window = window_at(period, tz, now)
    assert window.end is not None and window.start <= now < window.end
    following = window_at(period, tz, window.end)
    assert following.start == window.end and following.label != window.label
    start = datetime.fromtimestamp(window.start, tz)
    assert (start.hour, start.minute) == (0, 0)
    assert start.weekday() == 0 if period == "week" else True
    assert start.day == 1 if period == "month" else True


def test_period_labels() -> None:
    utc, now = ZoneInfo("UTC"), 1_767_225_600.0  # Thursday 2026-01-01 00:00 UTC
    assert window_at("week", utc, now).label == "2026-W01"
    assert window_at("week", utc, now).start == now - 3 * 86400  # Monday 2025-12-29
    assert window_at("month", utc, now - 1).label == "2025-12"
    assert window_at("day", ZoneInfo("America/New_York"), now).label == "2025-12-31"
    assert window_at("total", utc, now).resets_at() is None


def hooks(mock: MockUpstream) -> list[Any]:
    return [r.json for r in mock.received if r.path == "/v1/hooks/budget"]


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_webhook_fires_once_per_threshold(start_sidecar: StartSidecar, clock: ManualClock) -> None:
    extra = 'alert_at = [0.5, 0.8]\nalert_webhook = "{mock}/hooks/budget"'
    sidecar = start_sidecar(budget_toml(5.0, extra=extra), clock=clock)
    sidecar.mock.fault("status_5xx", times=1, path="/v1/hooks/budget", status=503)
    statuses = [chat(sidecar.url, max_tokens=3).status_code for _ in range(6)]
    assert statuses.count(200) == 4  # 4 x $1.10 = $4.40 settled, the 5th may not fit
    wait_for(lambda: len(hooks(sidecar.mock)) >= 3)
    time.sleep(0.1)
    posts = hooks(sidecar.mock)
    # one failed (503) post retried, then one post per threshold, never more
    assert len(posts) == 3
    assert [p["threshold"] for p in posts[1:]] == [0.5, 0.8]
    assert posts[1]["budget"] == "team-budget" and posts[1]["bucket"] == "team=search"
    assert posts[1]["resets_at"] == "2026-01-02T00:00:00Z" and posts[1]["period"] == "day"
    assert posts[2]["spent_usd"] == pytest.approx(4.4) and posts[2]["limit_usd"] == 5.0


def test_admin_lists_spend_by_bucket_and_tag_and_resets(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(2.0))
    assert chat(sidecar.url).status_code == 200
    assert chat(sidecar.url, team="ads").status_code == 200
    assert httpx.get(f"{sidecar.url}/admin/spend", timeout=10).status_code == 401
    listed = spend(sidecar.url, per="team", period="day")
    assert [b["bucket"] for b in listed[0]["buckets"]] == ["team=ads", "team=search"]
    row = listed[0]["buckets"][1]
    assert row["remaining_usd"] == pytest.approx(0.9) and row["reserved_usd"] == 0
    assert listed[0]["tags"] == [{"tag": "project=atlas", "spent_usd": pytest.approx(2.2)}]
    assert spend(sidecar.url, period="month") == []
    assert chat(sidecar.url).status_code == 429
    reset = httpx.post(f"{sidecar.url}/admin/budgets/reset", headers=ADMIN, timeout=10,
                       json={"budget": "team-budget", "bucket": "team=search"})
    assert reset.status_code == 200 and reset.json()["reset"] == 1
    assert chat(sidecar.url).status_code == 200
    assert bucket_spend(sidecar.url, "team=ads") == pytest.approx(1.1)
    unknown = httpx.post(f"{sidecar.url}/admin/budgets/reset", headers=ADMIN, timeout=10,
                         json={"budget": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "budget"


def test_requests_outside_a_budget_are_not_charged_to_it(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(1.5, extra='match = { model = "gpt-4o*" }'))
    no_team = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=10, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]})
    # no team: a per-team budget does not apply (even though 4096 output tokens would not fit)
    assert no_team.status_code == 200 and "x-sidecar-cost-usd" in no_team.headers
    embeddings = httpx.post(f"{sidecar.url}/v1/embeddings", timeout=10,
                            headers={"x-sidecar-team": "search"},
                            json={"model": "text-embedding-3-small", "input": "one two three"})
    assert embeddings.status_code == 200
    assert float(embeddings.headers["x-sidecar-cost-usd"]) == pytest.approx(3 * 0.02 / 1e6)
    assert spend(sidecar.url)[0]["buckets"] == []


def test_upstream_errors_cost_nothing(start_sidecar: StartSidecar) -> None:
    no_retries = '[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\nretries = 0\n'
    sidecar = start_sidecar(budget_toml(100) + no_retries)
    sidecar.mock.fault("status_5xx", times=1, status=500)
    failed = chat(sidecar.url)
    assert failed.status_code >= 500
    assert bucket_spend(sidecar.url) == 0.0
    assert chat(sidecar.url, max_tokens=3).status_code == 200


async def test_spend_is_exported_by_budget_and_tag(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    state = StateBackend.open(StateConfig(data_dir=str(tmp_path)))
    ctx = PolicyContext(settings=Settings(), state=state, tokens=TokenCounter(), meter=meter)
    config = Config(name="b", per="team", usd=1e6,
                    prices={"m": ModelPrice(input=1e6, output=1e6)})
    policy = await create([config], ctx)
    assert policy is not None

    async def upstream(ex: Exchange) -> Reply:
        return Reply.from_json(200, {"usage": {"prompt_tokens": 2, "completion_tokens": 1}})

    for tags in ({"project": "atlas"}, {"project": "atlas"}, {"project": "zeus"}):
        ex = Exchange("r", Endpoint.CHAT, "POST", "/v1/chat/completions", "", _headers(), "", b"",
                      {"model": "m", "messages": []}, model="m",
                      identity=Identity("k", team="t", tags=tags))
        await policy(ex, upstream)
    await policy.aclose()
    points = {p.attributes["tag"]: p.value for metric in _metrics(reader)
              for p in metric.data.data_points if metric.name == "sidecar.budget.spend_usd"}
    assert points == {"project=atlas": pytest.approx(6.0), "project=zeus": pytest.approx(3.0)}


def _headers() -> Any:
    from multidict import CIMultiDict, CIMultiDictProxy
    return CIMultiDictProxy(CIMultiDict())


def _metrics(reader: InMemoryMetricReader) -> Iterator[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            yield from scope.metrics


def test_check_config_reports_bad_budget_keys(tmp_path: Path) -> None:
    from proxy.config import load_config
    from proxy.errors import ConfigError
    path = tmp_path / "bad.toml"
    path.write_text('[[budgets]]\nname = "x"\nper = "planet"\ntimezone = "Mars/Olympus"\n'
                    'alert_at = [1.5]\nperiod = "year"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = "\n".join(raised.value.problems)
    for key in ("budgets[0].per", "budgets[0].timezone", "budgets[0].alert_at", "budgets[0].period"):
        assert key in text


# ---- Redis: four processes sharing it, and Redis down -------------------------------------------


async def test_four_processes_sharing_redis_never_overspend(
        mock: MockUpstream, tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    config = tmp_path / "multi.toml"
    config.write_text(
        f'[[upstreams]]\nname = "mock"\nbase_url = "{mock.base_url}"\n\n'
        f'[state]\nbackend = "redis"\nurl = "{redis_url}"\n'
        + budget_toml(BURST_CAP, prices=BURST_PRICES))
    env = {"TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", ""),
           "SIDECAR_STATE__DATA_DIR": str(tmp_path / "state")}
    with SidecarProcesses(config, count=4, env=env) as fleet:
        urls = fleet.urls
        statuses = await burst(urls, 500)
        assert set(statuses) <= {200, 429}
        spent = await asyncio.to_thread(bucket_spend, urls[0])
        assert spent == pytest.approx(statuses.count(200) * BURST_COST)
        assert 0.8 * BURST_CAP <= spent <= BURST_CAP


def test_redis_down_refuses_budgeted_requests_cleanly(start_sidecar: StartSidecar,
                                                     redis_server: RedisServer) -> None:  # noqa: F811
    toml = budget_toml(100) + f'\n[state]\nbackend = "redis"\nurl = "{redis_server.url}"\n'
    sidecar = start_sidecar(toml)
    assert chat(sidecar.url).status_code == 200
    redis_server.stop()
    down = chat(sidecar.url)
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "state_backend_unavailable"
    assert sidecar.mock.count("/v1/chat/completions") == 1


def test_a_stream_cut_short_is_charged_the_most_it_could_cost(
        start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(budget_toml(100))
    sidecar.mock.fault("drop_mid_stream", times=1, after=2)
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 5, "stream": True,
                            "messages": [{"role": "user", "content": "hello there"}]}
    with httpx.stream("POST", f"{sidecar.url}/v1/chat/completions", json=body, timeout=10,
                      headers={"x-sidecar-team": "search"}) as answer:
        text = b"".join(answer.iter_bytes())
    assert b"upstream_stream_broken" in text
    # no usage arrived: the most it could cost (its input tokens + 5 output tokens) is charged
    reserved = TokenCounter().count_request(body, "gpt-4o-mini") * 0.1 + 5 * 0.2
    assert bucket_spend(sidecar.url) == pytest.approx(reserved)
