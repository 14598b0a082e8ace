"""Circuit breaker states and pool selection, with an injected clock and a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter

from proxy.routing.balancer import Balancer
from proxy.routing.breaker import CircuitBreaker
from proxy.routing.retry import backoff, retry_after
from proxy.settings import BreakerConfig, UpstreamConfig


def breaker(**overrides: object) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(**{"consecutive_failures": 3, "cooldown": 10.0,
                                           "min_requests": 10, "window": 30.0, **overrides}))


def test_opens_after_consecutive_failures_and_half_opens_with_one_probe() -> None:
    b = breaker()
    for t in range(3):
        assert b.allow(t)
        b.record(False, t)
    assert b.state == "open" and not b.allow(5)
    assert b.retry_in(5) == 7
    assert b.allow(12) and b.state == "half_open"
    assert not b.allow(12.1), "only one probe while half-open"
    b.record(True, 12.5)
    assert b.state == "closed" and b.allow(13)


def test_failed_probe_opens_again_for_a_full_cooldown() -> None:
    b = breaker()
    for t in range(3):
        b.record(False, t)
    assert b.allow(20)
    b.record(False, 20)
    assert b.state == "open" and not b.allow(29) and b.allow(30.5)


def test_error_rate_over_the_window_opens_it() -> None:
    b = breaker(consecutive_failures=100, error_rate=0.5)
    for i in range(20):
        b.record(i % 2 == 0, i * 0.1)  # alternating: never 3 in a row, 50% failures
    assert b.state == "open"


def test_old_outcomes_leave_the_window() -> None:
    b = breaker(consecutive_failures=100, error_rate=0.5)
    for i in range(9):
        b.record(False, i * 0.1)
    for i in range(12):
        b.record(True, 100 + i)  # the failures are 100 s old
    assert b.state == "closed"


def test_disabled_breaker_never_opens() -> None:
    b = breaker(enabled=False)
    for t in range(50):
        b.record(False, t)
    assert b.allow(51)


def pool(*weights: float) -> list[UpstreamConfig]:
    return [UpstreamConfig(name=f"u{i}", base_url="http://h/v1", weight=w, pool="p")
            for i, w in enumerate(weights)]


def test_weighted_selection_follows_the_weights() -> None:
    balancer = Balancer("weighted", random.Random(7))
    members = pool(3, 1)
    firsts = Counter(balancer.order(members, 0)[0].name for _ in range(4000))
    assert 0.72 < firsts["u0"] / 4000 < 0.78
    assert sorted(u.name for u in balancer.order(members, 0)) == ["u0", "u1"]


def test_least_busy_picks_the_fewest_in_flight() -> None:
    balancer = Balancer("least_busy", random.Random(1))
    members = pool(1, 1, 1)
    balancer.of("u0").in_flight = 5
    balancer.of("u1").in_flight = 1
    balancer.of("u2").in_flight = 3
    assert [u.name for u in balancer.order(members, 0)] == ["u1", "u2", "u0"]


def test_a_pair_prefers_the_idler_and_shares_ties_evenly() -> None:
    balancer = Balancer("least_busy", random.Random(5))
    members = pool(1, 1)
    balancer.of("u0").in_flight = 2
    assert [u.name for u in balancer.order(members, 0)] == ["u1", "u0"]
    balancer.of("u1").in_flight = 2
    firsts = Counter(balancer.order(members, 0)[0].name for _ in range(4000))
    assert 0.45 < firsts["u0"] / 4000 < 0.55


def test_latency_prefers_the_fastest_ewma() -> None:
    balancer = Balancer("latency", random.Random(1))
    members = pool(1, 1)
    for _ in range(5):
        balancer.of("u0").observe_latency(0.5)
        balancer.of("u1").observe_latency(0.1)
    assert balancer.order(members, 0)[0].name == "u1"


def test_a_429_backs_an_upstream_off_until_its_retry_after() -> None:
    balancer = Balancer("least_busy", random.Random(1))
    members = pool(1, 1)
    balancer.of("u0").backed_off_until = 30
    assert [u.name for u in balancer.order(members, 10)] == ["u1", "u0"]
    balancer.of("u1").in_flight = 9
    assert balancer.order(members, 31)[0].name == "u0"


def test_retry_after_headers_and_full_jitter() -> None:
    assert retry_after({"retry-after-ms": "250"}, 0) == 0.25
    assert retry_after({"retry-after": "3"}, 0) == 3
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 1445412480) == 10
    assert retry_after({"retry-after": "soon"}, 0) is None and retry_after({}, 0) is None
    rng = random.Random(3)
    delays = [backoff(4, 0.25, 8.0, rng) for _ in range(500)]
    assert all(0 <= d <= 4.0 for d in delays) and max(delays) > 3.0
