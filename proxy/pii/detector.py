"""The compiled detector: every enabled recognizer run over a text, overlaps resolved.

Built once from `PiiConfig`; `scan` is pure and safe to call from any task or thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from proxy.pii import phones, recognizers
from proxy.pii.config import PiiConfig


class Match(NamedTuple):
    start: int
    end: int
    entity: str


@dataclass(frozen=True, slots=True)
class Detector:
    recognizers: tuple[recognizers.Recognizer, ...]
    allow: frozenset[str] = frozenset()

    def scan(self, text: str) -> list[Match]:
        """Non-overlapping matches in text order; on overlap the higher priority, then the
        longer span, wins."""
        found: list[tuple[int, int, Match]] = []
        numeric = recognizers.numeric_clusters(text)
        for recognizer in self.recognizers:     # highest priority first
            spans = [(start, end) for start, end in recognizer.find(text, numeric)
                     if not (self.allow and text[start:end].casefold() in self.allow)]
            found.extend((recognizer.priority, end - start, Match(start, end, recognizer.entity))
                         for start, end in spans)
            if spans and numeric:
                # Digits inside an IBAN, a key or an e-mail would lose the overlap anyway.
                numeric = [c for c in numeric
                           if not any(s <= c[0] and c[1] <= e for s, e in spans)]
        if len(found) < 2:
            return [m for _, _, m in found]
        found.sort(key=lambda f: (-f[0], -f[1], f[2].start))
        kept: list[Match] = []
        for _, _, match in found:
            if all(match.end <= k.start or match.start >= k.end for k in kept):
                kept.append(match)
        kept.sort()
        return kept


def compile_detector(config: PiiConfig) -> Detector:
    compiled: list[recognizers.Recognizer] = []
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
