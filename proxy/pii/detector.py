"""The compiled detector: every enabled recognizer run over a text, overlaps resolved.

Built once from `PiiConfig`; `scan` is pure and safe to call from any task or thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.pii import phones, recognizers
from proxy.pii.config import PiiConfig
from proxy.pii.facts import Cluster, Span, facts
from proxy.pii.recognizers import Recognizer


class Match(NamedTuple):
    start: int
    end: int
    entity: str


_new = tuple.__new__     # builds a Match without the Python-level `Match.__new__`


@dataclass(frozen=True, slots=True)
class Detector:
    recognizers: tuple[Recognizer, ...]
    allow: frozenset[str] = frozenset()
    # For each combination of `facts` flags seen so far, the recognizers whose needs it meets
    # (in order); filled as texts arrive, since few of the combinations ever occur.
    plans: dict[int, tuple[Recognizer, ...]] = field(default_factory=dict, compare=False,
                                                      hash=False)

    def scan(self, text: str) -> list[Match]:
        """Non-overlapping matches in text order; on overlap the higher priority, then the
        longer span, wins."""
        if not text:
            return []
        seen = facts(text)
        plan = self.plans.get(seen.flags)
        if plan is None:
            plan = self.plans[seen.flags] = self._plan(seen.flags)
        found: list[tuple[int, int, str, int]] = []     # start, end, entity, priority
        for recognizer in plan:     # highest priority first
            spans = recognizer.find(seen)
            if spans and self.allow:
                spans = [s for s in spans if text[s[0]:s[1]].casefold() not in self.allow]
            if not spans:
                continue
            entity, priority = recognizer.entity, recognizer.priority
            for start, end in spans:
                found.append((start, end, entity, priority))
            if seen.clusters:
                # Digits inside an IBAN, a key or an e-mail would lose the overlap anyway.
                seen.clusters = _outside(seen.clusters, spans)
        if len(found) < 2:
            return [_new(Match, found[0][:3])] if found else []
        return _resolve(found)

    def _plan(self, flags: int) -> tuple[Recognizer, ...]:
        return tuple(r for r in self.recognizers if r.needs & flags == r.needs
                     and (not r.needs_any or r.needs_any & flags))


def _outside(clusters: list[Cluster], spans: list[Span]) -> list[Cluster]:
    """The clusters (in text order) that no span contains, in one sweep: a cluster is inside
    when a span starting at or before it reaches as far as its end."""
    ordered = sorted(spans)
    kept = []
    reach, index, count = -1, 0, len(ordered)
    for cluster in clusters:
        while index < count and ordered[index][0] <= cluster[0]:
            reach = max(reach, ordered[index][1])
            index += 1
        if cluster[1] > reach:
            kept.append(cluster)
    return kept


def _resolve(found: list[tuple[int, int, str, int]]) -> list[Match]:
    """The matches to keep, in text order. Matches rarely overlap: when none do, all are kept."""
    ordered = sorted(found)
    for i in range(1, len(ordered)):
        if ordered[i - 1][1] > ordered[i][0]:
            return _by_priority(found)
    return [_new(Match, (start, end, entity)) for start, end, entity, _ in ordered]


def _by_priority(found: list[tuple[int, int, str, int]]) -> list[Match]:
    """Higher priority, then longer, then earlier first; among equals, the recognizer listed
    first."""
    found.sort(key=lambda f: (-f[3], f[0] - f[1], f[0]))
    kept: list[Match] = []
    for start, end, entity, _ in found:
        if all(end <= k.start or start >= k.end for k in kept):
            kept.append(Match(start, end, entity))
    kept.sort()
    return kept


def compile_detector(config: PiiConfig) -> Detector:
    compiled: list[Recognizer] = []
    for entity in config.entities:
        if entity == "phone":
            compiled.append(phones.phone_recognizer(config.phone_regions))
        else:
            compiled.extend(recognizers.builtin(entity))
    compiled.extend(recognizers.custom(c.name, c.pattern, c.ignore_case, c.validator)
                    for c in config.custom)
    compiled.sort(key=lambda r: -r.priority)
    allow = frozenset(value.casefold() for value in config.allow_list)
    return Detector(tuple(compiled), allow)
