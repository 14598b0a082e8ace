"""What the client is told about limits: OpenAI's `x-ratelimit-*` headers for the tightest rule,
and the 429 (or "can never fit") error naming the rule that refused.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence

from proxy.errors import RateLimited
from proxy.ratelimit.rules import Plan
from proxy.state.base import Admission, Charge
from proxy.units import go_duration

_DURATIONS = 4096  # formatted reset times kept: a window's resets repeat to the millisecond


class Headers:
    """Writes `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of the tightest counters.

    The tightest of a kind is the counter with the smallest share of its limit left (the first
    one on a tie); `reset` is the time until that counter is back at its full limit, as a Go
    duration like OpenAI sends. Durations of a second or more are remembered by their
    millisecond, since formatting them costs more than the rest of the headers together.
    """

    def __init__(self) -> None:
        self._durations: dict[int, str] = {}

    def write(self, into: MutableMapping[str, str], plan: Plan, charges: Sequence[Charge],
              admission: Admission) -> int:
        """Set the headers; returns the index of the tokens counter shown, -1 when none is."""
        remaining, reset = admission.remaining, admission.reset
        shown = -1
        for (limit_name, remaining_name, reset_name), indexes in plan.headers:
            best = indexes[0]
            if len(indexes) > 1:
                share = remaining[best] / charges[best].limit
                for index in indexes[1:]:
                    if remaining[index] / charges[index].limit < share:
                        best, share = index, remaining[index] / charges[index].limit
            into[limit_name] = plan.limits[best]
            into[remaining_name] = str(remaining[best])
            into[reset_name] = self.duration(reset[best])
            if plan.planned[best].kind == "tokens":
                shown = best
        return shown

    def duration(self, seconds: float) -> str:
        if seconds < 1:
            return go_duration(seconds)
        millis = round(seconds * 1000)
        text = self._durations.get(millis)
        if text is None:
            if len(self._durations) >= _DURATIONS:
                self._durations.clear()
            text = self._durations[millis] = go_duration(millis / 1000)
        return text


def refusal(plan: Plan, charges: Sequence[Charge], admission: Admission) -> RateLimited:
    """The 429 for a refused admission; `x-should-retry: false` when the request can never fit."""
    planned = plan.planned[admission.refused]
    rule, charge = planned.rule, charges[admission.refused]
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
