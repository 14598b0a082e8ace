"""What the client is told about limits: OpenAI's `x-ratelimit-*` headers for the tightest rule,
and the 429 (or "can never fit") error naming the rule that refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from proxy.errors import RateLimited
from proxy.ratelimit.rules import Planned
from proxy.state.base import Admission
from proxy.units import go_duration


def rate_headers(plan: Sequence[Planned], admission: Admission) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of the tightest rule of each kind.

    The tightest is the one with the smallest share of its limit left; `reset` is the time until
    that counter is back at its full limit, as a Go duration like OpenAI sends.
    """
    best: dict[str, tuple[float, int]] = {}
    for index, planned in enumerate(plan):
        if planned.kind != "concurrent":
            share = admission.remaining[index] / planned.charge.limit
            if planned.kind not in best or share < best[planned.kind][0]:
                best[planned.kind] = (share, index)
    headers: dict[str, str] = {}
    for kind, (_, index) in best.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(plan[index].charge.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(admission.remaining[index])
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(admission.reset[index])
    return headers


def refusal(plan: Sequence[Planned], admission: Admission) -> RateLimited:
    """The 429 for a refused admission; `x-should-retry: false` when the request can never fit."""
    planned = plan[admission.refused]
    rule, charge = planned.rule, planned.charge
    per = go_duration(rule.window)
    kind = "tokens" if planned.kind == "tokens" else "requests"
    if math.isinf(admission.retry_after):
        return RateLimited(
            f"Request too large for rule '{rule.name}' on {kind} per {per}: Limit {charge.limit}, "
            f"Requested {charge.cost}. It can never fit in this limit; make the request smaller "
            "(fewer input tokens or a lower max_tokens).",
            type=kind, headers={"x-should-retry": "false"})
    wait = go_duration(admission.retry_after)
    retry = {"Retry-After": str(max(1, math.ceil(admission.retry_after))),
             "retry-after-ms": str(max(1, math.ceil(admission.retry_after * 1000)))}
    if planned.kind == "concurrent":
        return RateLimited(
            f"Concurrency limit reached for rule '{rule.name}': Limit {charge.limit} requests in "
            f"flight. Please try again in {wait}.", type="requests", headers=retry)
    used = charge.limit - admission.remaining[admission.refused]
    return RateLimited(
        f"Rate limit reached for rule '{rule.name}' on {kind} per {per}: Limit {charge.limit}, "
        f"Used {used}, Requested {charge.cost}. Please try again in {wait}.",
        type=kind, headers=retry)
