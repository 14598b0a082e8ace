"""Built-in and custom recognizers: each finds candidate spans in text and confirms them.

A recognizer is compiled once from config; `find(text, numeric)` yields the validated spans.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from proxy.pii import validators as v

Span = tuple[int, int]

# Overlaps resolve to the higher priority first: a secret inside a URL beats the "email" the
# URL's `password@host` part looks like; a card number beats the phone its digits resemble.
PRIORITY: Mapping[str, int] = MappingProxyType({
    "secret": 100, "custom": 90, "email": 80, "iban": 70, "credit_card": 60, "ssn": 50,
    "ip_address": 40, "phone": 30,
})


Cluster = tuple[int, int, int]     # start, end, number of digits


class Recognizer(Protocol):
    """Finds validated spans. `numeric` lists the digit clusters of the text (computed once per
    scan): recognizers of numbers look only there instead of running their regex over
    everything, which keeps a scan within a few regex passes per text."""

    @property
    def entity(self) -> str: ...

    @property
    def priority(self) -> int: ...

    def find(self, text: str, numeric: Sequence[Cluster]) -> Iterator[Span]: ...


# A run of digits and the separators numbers are written with; every phone, card, SSN and IPv4
# address lies inside one. Starting with an explicit class lets `re` skip ahead in C.
NUMERIC_CLUSTER = re.compile(r"[0-9][0-9 ()./-]{5,}[0-9]")
NON_DIGITS = re.compile(r"[^0-9]+")
_WINDOW_BEFORE, WINDOW_AFTER = 3, 12     # room for "+(" before and " ext. 1234" after


def numeric_clusters(text: str) -> list[Cluster]:
    return [(m.start(), m.end(), len(NON_DIGITS.sub("", m.group())))
            for m in NUMERIC_CLUSTER.finditer(text)]


def count_digits(text: str) -> int:
    return len(NON_DIGITS.sub("", text))


@dataclass(frozen=True, slots=True)
class PatternRecognizer:
    """A regex (a group named `v` narrows the span) plus an optional validator.

    `not_after` replaces a leading look-behind, which would stop `re` from skipping ahead to
    the pattern's first character: a match preceded by a word character or by one of these
    characters is dropped. None means no check. `numeric` patterns run only in digit clusters;
    `triggers` are substrings of which a match contains one, checked before the regex runs.
    """

    entity: str
    priority: int
    pattern: re.Pattern[str]
    validator: Callable[[str], bool] | None = None
    triggers: tuple[str, ...] = ()
    not_after: str | None = None
    numeric: bool = False
    min_digits: int = 0
    needs: str | None = None       # a character a numeric match always contains

    def find(self, text: str, numeric: Sequence[Cluster]) -> Iterator[Span]:
        if self.triggers and not any(t in text for t in self.triggers):
            return
        if not self.numeric:
            yield from self._find(text, 0, len(text), len(text))
            return
        for start, end, digits in numeric:
            if digits >= self.min_digits and (self.needs is None
                                              or text.find(self.needs, start, end) >= 0):
                # Matches must start in this cluster (the window's tail may hold the next one,
                # cut short) and lie within it plus an extension.
                yield from self._find(text, max(0, start - _WINDOW_BEFORE), end,
                                      min(len(text), end + WINDOW_AFTER))

    def _find(self, text: str, pos: int, limit: int, endpos: int) -> Iterator[Span]:
        narrow = "v" in self.pattern.groupindex
        while pos < limit:
            match = self.pattern.search(text, pos, endpos)
            if match is None or match.start() >= limit:
                return
            start, end = match.span("v") if narrow else match.span()
            fragment = self.not_after is not None and glued(text, match.start(), self.not_after)
            if start >= 0 and not fragment and (self.validator is None
                                             or self.validator(text[start:end])):
                yield start, end
                pos = match.end()
            else:
                # A rejected candidate may hide a real one that starts inside it (a phone number
                # followed by a card number reads as one long digit run): retry from the next
                # position a match may start at.
                pos = _next_start(text, match.start() + 1, min(match.end(), limit),
                                  self.not_after)


def _next_start(text: str, pos: int, limit: int, extra: str | None) -> int:
    if extra is None:
        return pos
    while pos < limit and glued(text, pos, extra):
        pos += 1
    return pos


def glued(text: str, start: int, extra: str) -> bool:
    """True when the character before `start` continues a word (so the match is a fragment)."""
    if start == 0:
        return False
    before = text[start - 1]
    return before.isalnum() or before == "_" or before in extra


@dataclass(frozen=True, slots=True)
class EmailRecognizer:
    """Emails, found from each `@` outwards (cheaper than a regex that starts anywhere)."""

    entity: str = "email"
    priority: int = 80

    def find(self, text: str, numeric: Sequence[Cluster]) -> Iterator[Span]:
        at = text.find("@")
        while at >= 0:
            local = _LOCAL.search(text, max(0, at - 64), at)
            domain = _DOMAIN.match(text, at + 1)
            if local is not None and domain is not None and not glued(text, local.start(), ""):
                yield local.start(), domain.end()
            at = text.find("@", at + 1)


@dataclass(frozen=True, slots=True)
class Ipv6Recognizer:
    """IPv6 addresses, grown from each `:hex:` seed and confirmed by `ipaddress`."""

    entity: str = "ip_address"
    priority: int = 40

    def find(self, text: str, numeric: Sequence[Cluster]) -> Iterator[Span]:
        last = 0
        for seed in _IPV6_SEED.finditer(text):
            if seed.start() < last:
                continue
            start, end = seed.start(), seed.end()
            while start > 0 and text[start - 1] in _HEX_COLON:
                start -= 1
            while end < len(text) and (text[end] in _HEX_COLON or text[end] in ".%"
                                       or (text[end].isalnum() and "%" in text[start:end])):
                end += 1
            while end > start and text[end - 1] in ".:%" and text[end - 2:end] != "::":
                end -= 1
            last = end
            free = end == len(text) or not text[end].isalnum()
            if free and not glued(text, start, ".") and v.ipv6(text[start:end]):
                yield start, end


_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_IPV6_SEED = re.compile(r":[0-9A-Fa-f]{0,4}:")
_LOCAL = re.compile(r"[\w.%+-]+\Z")
_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"[0-9](?:[ -]?[0-9]){12,18}(?!\w|-\d)")
_SSN = re.compile(r"[0-9]{3}([- ])[0-9]{2}\1[0-9]{4}(?!\w|-\d)")
_SSN_CONTEXT = re.compile(
    r"[Ss](?:[Ss][Nn]\b|[Ss]#|ocial[ -][Ss]ecurity(?:[ -][Nn](?:o|umber))?)\D{0,20}?"
    r"(?P<v>(?<!\d)\d{9})(?!\d)"
)
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?!\w|\.\d)")
_TOKENS = re.compile(
    r"(?:"
    r"sk-ant-[a-z]{3,10}\d{0,3}-[A-Za-z0-9_-]{32,}"                  # Anthropic
    r"|sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_-]{0,200}\d)[A-Za-z0-9_-]{20,}"  # OpenAI
    r"|(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}"             # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub
    r"|xox[abposr]-[A-Za-z0-9-]{10,250}"                              # Slack tokens
    r"|https://hooks\.slack\.com/services/[A-Za-z0-9/_]{20,}"         # Slack webhooks
    r"|AIza[0-9A-Za-z_-]{35}"                                         # Google API key
    r")(?![\w-])"
)
_TOKEN_TRIGGERS = ("sk-", "AKIA", "ASIA", "ABIA", "ACCA", "A3T", "ghp_", "gho_", "ghu_", "ghs_",
                   "ghr_", "github_pat_", "xox", "hooks.slack.com", "AIza")
_AWS_SECRET = re.compile(
    r"[Aa][Ww][Ss]_?(?i:secret(?:_?access)?_?key)[\"']?\s*[:=]\s*[\"']?"
    r"(?P<v>[A-Za-z0-9/+]{40})(?![\w/+])"
)
_JWT = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}(?![\w-])")
_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]{0,16384}?"
    r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
)
_URL_PASSWORD = re.compile(r"[A-Za-z][\w+.-]{0,20}://[^\s:/@]{1,256}:(?P<v>[^\s/@]{1,256})@")


@dataclass(frozen=True, slots=True)
class IbanRecognizer:
    """IBANs, compact or in groups of four; the country's length decides where one ends."""

    entity: str = "iban"
    priority: int = PRIORITY["iban"]
    pattern: re.Pattern[str] = re.compile(r"[A-Z][A-Z][0-9][0-9](?: ?[A-Z0-9]){11,30}")

    def find(self, text: str, numeric: Sequence[Cluster]) -> Iterator[Span]:
        for match in self.pattern.finditer(text):
            length = v.iban_length(match.group()[:2])
            if length is None or glued(text, match.start(), ""):
                continue
            end = _end_after(text, match.start(), length)
            if end is None or (end < len(text) and text[end].isalnum()):
                continue
            if v.iban(text[match.start():end]):
                yield match.start(), end


def _end_after(text: str, start: int, count: int) -> int | None:
    """Index just past the `count`-th alphanumeric character from `start` (spaces skipped)."""
    seen = 0
    for i in range(start, min(len(text), start + count * 2)):
        if text[i].isalnum():
            seen += 1
            if seen == count:
                return i + 1
        elif text[i] != " ":
            return None
    return None


def builtin(entity: str) -> list[Recognizer]:
    """The recognizers for one built-in entity name (phones live in `proxy.pii.phones`)."""
    pri = PRIORITY[entity]
    match entity:
        case "email":
            return [EmailRecognizer()]
        case "credit_card":
            return [PatternRecognizer(entity, pri, _CARD, v.credit_card, (), "-", True, 13)]
        case "ssn":
            return [PatternRecognizer(entity, pri, _SSN, v.ssn, (), "-", True, 9),
                    PatternRecognizer(entity, pri, _SSN_CONTEXT, v.ssn, ("SSN", "SS#", "ssn",
                                      "ss#", "ecurity", "ECURITY"), "")]
        case "iban":
            return [IbanRecognizer()]
        case "ip_address":
            return [PatternRecognizer(entity, pri, _IPV4, v.ipv4, (), ".", True, 4, "."),
                    Ipv6Recognizer()]
        case "secret":
            return [PatternRecognizer(entity, pri, _TOKENS, None, _TOKEN_TRIGGERS, "-"),
                    PatternRecognizer(entity, pri, _AWS_SECRET, None, ("ecret", "ECRET"), ""),
                    PatternRecognizer(entity, pri, _JWT, v.jwt, ("eyJ",), "-"),
                    PatternRecognizer(entity, pri, _PEM, None, ("PRIVATE KEY-----",)),
                    PatternRecognizer(entity, pri, _URL_PASSWORD, None, ("://",), "")]
    raise ValueError(f"unknown entity {entity!r}")


def custom(name: str, pattern: str, ignore_case: bool, validator: str | None) -> Recognizer:
    flags = re.IGNORECASE if ignore_case else 0
    check = v.VALIDATORS[validator] if validator else None
    return PatternRecognizer(name, PRIORITY["custom"], re.compile(pattern, flags), check)
