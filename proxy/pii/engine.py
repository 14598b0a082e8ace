"""The runtime PII engine compiled from `PiiConfig`, and the per-request `Redaction` session
that applies each entity's action and remembers pseudonyms, counts and blocked types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from proxy.pii import actions
from proxy.pii.config import Action, PiiConfig
from proxy.pii.detector import Detector, Match, compile_detector


@dataclass(frozen=True, slots=True)
class PiiEngine:
    detector: Detector
    actions: Mapping[str, Action]
    default_action: Action = "redact"
    hash_key: bytes = b""
    responses: bool = False
    holdback: int = 64

    def session(self) -> Redaction:
        return Redaction(self)

    def action(self, entity: str) -> Action:
        return self.actions.get(entity, self.default_action)


def compile_engine(config: PiiConfig) -> PiiEngine:
    """Compile every regex and the action table once, at startup."""
    entities = [*config.entities, *(c.name for c in config.custom)]
    return PiiEngine(
        detector=compile_detector(config),
        actions=MappingProxyType({e: config.action_for(e) for e in entities}),
        default_action=config.action,
        hash_key=config.hash_key.get_secret_value().encode(),
        responses=config.responses,
        holdback=config.holdback_chars,
    )


class Redaction:
    """One request's state. Counts are per entity type; values are never kept except in the
    pseudonym map, which lives only as long as the request."""

    __slots__ = ("blocked", "counts", "engine", "output_counts", "pseudonyms")

    def __init__(self, engine: PiiEngine) -> None:
        self.engine = engine
        self.pseudonyms = actions.PseudonymMap()
        self.counts: dict[str, int] = {}
        self.output_counts: dict[str, int] = {}
        self.blocked: set[str] = set()

    def request_text(self, text: str) -> str:
        """Text the upstream may read: every match replaced according to its action."""
        matches = self.engine.detector.scan(text)
        if not matches:
            return text
        return self._apply(text, matches, output=False)

    def output_text(self, text: str) -> str:
        """Model output: PII the request did not carry is redacted (hashed or masked if so
        configured); `block` and `pseudonymize` fall back to `redact`, since the answer has
        already been produced and a new placeholder would mean nothing to the client."""
        matches = self.engine.detector.scan(text)
        if not matches:
            return text
        return self._apply(text, matches, output=True)

    def _apply(self, text: str, matches: list[Match], *, output: bool) -> str:
        parts: list[str] = []
        last = 0
        counts = self.output_counts if output else self.counts
        for start, end, entity in matches:
            parts.append(text[last:start])
            parts.append(self._replacement(entity, text[start:end], output))
            counts[entity] = counts.get(entity, 0) + 1
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def _replacement(self, entity: str, value: str, output: bool) -> str:
        action = self.engine.actions.get(entity, self.engine.default_action)
        if action == "mask":
            return actions.mask(entity, value)
        if action == "hash":
            return actions.hash_token(self.engine.hash_key, entity, value)
        if not output:
            if action == "block":
                self.blocked.add(entity)
            elif action == "pseudonymize":
                return self.pseudonyms.placeholder(entity, value)
        return actions.redact(entity)

    def apply_output(self, text: str, matches: list[Match]) -> str:
        """`output_text` with matches already found (by the stream scanner)."""
        return self._apply(text, matches, output=True)
