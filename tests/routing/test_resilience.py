"""Retries, fallbacks, breakers and experiments as a client sees them, against the mock's faults."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import ManualClock
from tests.harness import LoopThread
from tests.mock_upstream import MockUpstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
FAST = '[routing]\nbackoff_base = "10ms"\nbackoff_max = "50ms"\n'


@pytest.fixture
def backup(loop_thread: LoopThread) -> Iterator[MockUpstream]:
    upstream = MockUpstream()
    loop_thread.run(upstream.start())
    yield upstream
    loop_thread.run(upstream.aclose())


def post(sidecar, body=CHAT) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(sidecar.url + "/v1/chat/completions", json=body, timeout=20)


def test_safe_failures_are_retried_honouring_retry_after(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(FAST + '[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\nretries = 3\n')
    sidecar.mock.fault("rate_limit", times=1, retry_after=0.05)
    sidecar.mock.fault("status_5xx", times=1, status=502)
    sidecar.mock.fault("reset", times=1)
    answer = post(sidecar)
    assert answer.status_code == 200 and answer.headers["x-sidecar-attempts"] == "4"
    assert sidecar.mock.count("/v1/chat/completions") == 4


def test_retry_after_is_capped_by_max_retry_wait(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\n'
                            'max_retry_wait = "50ms"\n')
    sidecar.mock.fault("rate_limit", times=1, retry_after=120)
    assert post(sidecar).status_code == 200  # well within the client's 20 s timeout


def test_client_errors_are_not_retried(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(FAST)
    assert post(sidecar, {"model": "gpt-4o-mini", "messages": [{"role": "user"}],
                          "n": "x"}).status_code == 400
    assert sidecar.mock.count() == 0


def test_nothing_is_retried_after_the_first_streamed_byte(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(FAST)
    sidecar.mock.fault("drop_mid_stream", times=1, after=3)
    with pytest.raises(openai.APIError):
        list(sidecar.client().chat.completions.create(**CHAT, stream=True))
    assert sidecar.mock.count("/v1/chat/completions") == 1


def test_a_stream_that_fails_before_its_first_event_is_retried(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(FAST)
    sidecar.mock.fault("drop_mid_stream", times=1, after=0)
    chunks = list(sidecar.client().chat.completions.create(**CHAT, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello"
    assert sidecar.mock.count("/v1/chat/completions") == 2


def test_fallbacks_in_order_with_a_model_per_target(start_sidecar, backup: MockUpstream) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(FAST + f'''
[[upstreams]]
name = "primary"
base_url = "{{mock}}"
retries = 1
fallbacks = ["dead", {{ upstream = "backup", model = "gpt-4o-mini-eu" }}]

[[upstreams]]
name = "dead"
base_url = "http://127.0.0.1:9/v1"
retries = 0
models = []

[[upstreams]]
name = "backup"
base_url = "{backup.base_url}"
models = []
''')
    sidecar.mock.fault("status_5xx", times=2, status=503)
    answer = post(sidecar)
    assert answer.status_code == 200
    assert answer.headers["x-sidecar-upstream"] == "backup"
    assert answer.headers["x-sidecar-attempts"] == "4"  # primary x2, dead x1, backup x1
    assert backup.received[-1].json["model"] == "gpt-4o-mini-eu"
    assert answer.json()["model"] == "gpt-4o-mini-eu"


def test_failures_outside_fallback_on_reach_the_client(start_sidecar, backup: MockUpstream) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(f'''
[[upstreams]]
name = "primary"
base_url = "{{mock}}"
retries = 0
fallbacks = ["backup"]
fallback_on = ["5xx"]

[[upstreams]]
name = "backup"
base_url = "{backup.base_url}"
models = []
''')
    sidecar.mock.fault("rate_limit", times=1, retry_after=3)
    with pytest.raises(openai.RateLimitError):
        sidecar.client().chat.completions.create(**CHAT)
    assert backup.count() == 0


def test_breaker_opens_answers_503_then_probes_and_closes(start_sidecar, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar('[[upstreams]]\nname = "mock"\nbase_url = "{mock}"\nretries = 0\n'
                            '[upstreams.breaker]\nconsecutive_failures = 2\ncooldown = "60s"\n',
                            clock=clock)
    sidecar.mock.fault("status_5xx", times=2, status=500)
    assert [post(sidecar).status_code for _ in range(2)] == [500, 500]
    refused = post(sidecar)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "upstream_unavailable"
    assert refused.headers["Retry-After"] == "60"
    assert sidecar.mock.count() == 2, "an open circuit does not call the upstream"
    clock.advance(61)
    assert post(sidecar).status_code == 200  # the half-open probe succeeds
    assert post(sidecar).status_code == 200 and sidecar.mock.count() == 4


def test_open_breaker_skips_straight_to_the_fallback(start_sidecar, clock: ManualClock,  # type: ignore[no-untyped-def]
                                                     backup: MockUpstream) -> None:
    sidecar = start_sidecar(f'''
[[upstreams]]
name = "primary"
base_url = "{{mock}}"
retries = 0
fallbacks = ["backup"]
[upstreams.breaker]
consecutive_failures = 1

[[upstreams]]
name = "backup"
base_url = "{backup.base_url}"
models = []
''', clock=clock)
    sidecar.mock.fault("status_5xx", times=1)
    assert post(sidecar).headers["x-sidecar-upstream"] == "backup"
    second = post(sidecar)
    assert second.headers["x-sidecar-upstream"] == "backup"
    assert second.headers["x-sidecar-attempts"] == "1"
    assert sidecar.mock.count() == 1


def test_pool_members_share_traffic(start_sidecar, backup: MockUpstream) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(f'''
[routing]
strategy = "weighted"

[[upstreams]]
name = "a"
base_url = "{{mock}}"
pool = "gpt"
weight = 1

[[upstreams]]
name = "b"
base_url = "{backup.base_url}"
pool = "gpt"
weight = 1
''')
    served = [post(sidecar).headers["x-sidecar-upstream"] for _ in range(40)]
    assert set(served) == {"a", "b"}


EXPERIMENT = '''
[server]
admin_key = "adm"

[[experiments]]
name = "cheaper"
model = "gpt-4o"
[[experiments.variants]]
name = "control"
weight = 1
[[experiments.variants]]
name = "mini"
weight = 1
model = "gpt-4o-mini"
params = { temperature = 0.2 }
'''


def test_experiment_variants_are_sticky_and_reported(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar(EXPERIMENT)
    seen: dict[str, set[str]] = {}
    for user in [f"user{i}" for i in range(30)]:
        for _ in range(2):
            answer = httpx.post(sidecar.url + "/v1/chat/completions", json={
                **CHAT, "model": "gpt-4o"}, headers={"x-sidecar-user": user})
            seen.setdefault(user, set()).add(answer.headers["x-sidecar-variant"])
            sent = sidecar.mock.received[-1].json
            if answer.headers["x-sidecar-variant"] == "cheaper/mini":
                assert sent["model"] == "gpt-4o-mini" and sent["temperature"] == 0.2
            else:
                assert sent["model"] == "gpt-4o" and "temperature" not in sent
    assert all(len(variants) == 1 for variants in seen.values()), "sticky per user"
    assert {v for vs in seen.values() for v in vs} == {"cheaper/control", "cheaper/mini"}
    untouched = post(sidecar)  # gpt-4o-mini is not in the experiment
    assert "x-sidecar-variant" not in untouched.headers
    report = httpx.get(sidecar.url + "/admin/experiments",
                       headers={"Authorization": "Bearer adm"}).json()["experiments"][0]
    assert report["control"] == "control"
    assert sum(v["requests"] for v in report["variants"].values()) == 60
    assert set(report["comparison"]["mini"]) == {"latency_p_value", "cost_p_value"}
