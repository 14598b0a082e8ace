"""Built-in and custom recognizers: each finds candidate spans in text and confirms them.

A recognizer is compiled once from config; `find(facts)` returns the validated spans. `needs`
names the `proxy.pii.facts` flags a match cannot do without (an `@`, a long digit run...): the
detector skips the recognizer when the text lacks one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from proxy.pii import validators as v
from proxy.pii.facts import (
    ASSIGN,
    AT,
    CAPITAL_J,
    CAPITAL_V,
    COLON,
    COLONS,
    DASH,
    DIGITS13,
    DOTTED,
    KEY_PREFIX,
    KEY_PREFIXES,
    SLASH,
    SSN_SHAPED,
    UNDERSCORE,
    Cluster,
    Facts,
    Span,
)

__all__ = ["Cluster", "Span"]

# Overlaps resolve to the higher priority first: a secret inside a URL beats the "email" the
# URL's `password@host` part looks like; a card number beats the phone its digits resemble.
PRIORITY: Mapping[str, int] = MappingProxyType({
    "secret": 100, "custom": 90, "email": 80, "iban": 70, "credit_card": 60, "ssn": 50,
    "ip_address": 40, "phone": 30,
})


class Recognizer(Protocol):
    """Finds validated spans, using what `facts` says about the text to skip work: recognizers
    of numbers look only in its digit clusters, which keeps a scan within a few passes."""

    @property
    def entity(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def needs(self) -> int: ...

    @property
    def needs_any(self) -> int: ...

    def find(self, facts: Facts) -> list[Span]: ...


NON_DIGITS = re.compile(r"[^0-9]+")
_WINDOW_BEFORE, WINDOW_AFTER = 3, 12     # room for "+(" before and " ext. 1234" after


def count_digits(text: str) -> int:
    return len(NON_DIGITS.sub("", text))


@dataclass(frozen=True, slots=True)
class PatternRecognizer:
    """A regex (a group named `v` narrows the span) plus an optional validator.

    `not_after` replaces a leading look-behind, which would stop `re` from skipping ahead to
    the pattern's first character: a match preceded by a word character or by one of these
    characters is dropped. None means no check. `numeric` patterns run only in digit clusters
    of at least `min_digits` digits that contain `inside` (a character every match has) at least
    `inside_count` times;
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
    inside: str | None = None
    needs: int = 0
    needs_any: int = 0
    inside_count: int = 1
    narrow: bool = False       # set from the pattern: it has a group `v`

    def __post_init__(self) -> None:
        object.__setattr__(self, "narrow", "v" in self.pattern.groupindex)

    def find(self, facts: Facts) -> list[Span]:
        text = facts.text
        for trigger in self.triggers:
            if trigger in text:
                break
        else:
            if self.triggers:
                return []
        if not self.numeric:
            return self._find(text, 0, len(text), len(text))
        spans: list[Span] = []
        for start, end, digits in facts.clusters:
            if digits >= self.min_digits and (self.inside is None or text.count(
                    self.inside, start, end) >= self.inside_count):
                # Matches must start in this cluster (the window's tail may hold the next one,
                # cut short) and lie within it plus an extension.
                spans += self._find(text, max(0, start - _WINDOW_BEFORE), end,
                                    min(len(text), end + WINDOW_AFTER))
        return spans

    def _find(self, text: str, pos: int, limit: int, endpos: int) -> list[Span]:
        narrow = self.narrow
        spans: list[Span] = []
        while pos < limit:
            match = self.pattern.search(text, pos, endpos)
            if match is None or match.start() >= limit:
                break
            start, end = match.span("v") if narrow else match.span()
            fragment = self.not_after is not None and glued(text, match.start(), self.not_after)
            if start >= 0 and not fragment and (self.validator is None
                                             or self.validator(text[start:end])):
                spans.append((start, end))
                pos = match.end()
            else:
                # A rejected candidate may hide a real one that starts inside it (a phone number
                # followed by a card number reads as one long digit run): retry from the next
                # position a match may start at.
                pos = _next_start(text, match.start() + 1, min(match.end(), limit),
                                  self.not_after)
        return spans


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
class GatedRecognizer:
    """A pattern run over the whole text, but only once a cheap test (`gate`) has seen a shape
    that every match has, so that text without one costs a probe instead of a regex pass. The
    gate may pass on text without a match; it never fails on text with one."""

    inner: PatternRecognizer
    gate: Callable[[Facts], bool]
    needs: int = 0
    needs_any: int = 0

    @property
    def entity(self) -> str:
        return self.inner.entity

    @property
    def priority(self) -> int:
        return self.inner.priority

    def find(self, facts: Facts) -> list[Span]:
        return self.inner.find(facts) if self.gate(facts) else []


@dataclass(frozen=True, slots=True)
class EmailRecognizer:
    """Emails, found from each `@` outwards (cheaper than a regex that starts anywhere)."""

    entity: str = "email"
    priority: int = 80
    needs: int = AT
    needs_any: int = 0

    def find(self, facts: Facts) -> list[Span]:
        text = facts.text
        spans: list[Span] = []
        at = text.find("@")
        while at >= 0:
            domain = _DOMAIN.match(text, at + 1)
            if domain is not None:
                # The local part cannot reach back over white space: start looking after it.
                low = max(0, at - 64)
                low = max(low, text.rfind(" ", low, at) + 1, text.rfind("\n", low, at) + 1)
                local = _LOCAL.search(text, low, at)
                # Only where the window cut the search short can a word character come before.
                if local is not None and (local.start() > low or not glued(text, low, "")):
                    spans.append((local.start(), domain.end()))
            at = text.find("@", at + 1)
        return spans


@dataclass(frozen=True, slots=True)
class Ipv6Recognizer:
    """IPv6 addresses, grown from each `:hex:` seed and confirmed by `ipaddress`."""

    entity: str = "ip_address"
    priority: int = 40
    needs: int = COLONS      # a seed is `:hex:`
    needs_any: int = 0

    def find(self, facts: Facts) -> list[Span]:
        text = facts.text
        spans: list[Span] = []
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
                spans.append((start, end))
        return spans


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
_SSN_REACH = 48      # the longest "social security number" plus its 20 characters of filler
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
# Where `_TOKENS` matches start, as patterns that start with a literal (which `re` finds with a
# tight loop), by the flag a text with such a start has. `sk-...` and `xoxb-...` are found by
# their dash, followed by at least as many token characters as the shortest of them has.
_TOKEN_DASH = re.compile(r"-[A-Za-z0-9_-]{10}")
_TOKEN_STARTS = ((UNDERSCORE, re.compile(r"gh[pousr]_|github_pat_")),
                 (SLASH, re.compile(r"https://hooks\.slack\.com/services/")))
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


def _may_hold_token(facts: Facts) -> bool:
    """True when the text has the beginning of a `_TOKENS` match that is not glued to the word
    before it ("task-based" holds no key)."""
    text, flags = facts.text, facts.flags
    if flags & DASH:
        for dash in _TOKEN_DASH.finditer(text):
            at = dash.start()
            start = (at - 2 if at >= 2 and text.startswith("sk", at - 2)
                     else at - 4 if at >= 4 and text.startswith("xox", at - 4) else -1)
            if start >= 0 and not glued(text, start, "-"):
                return True
    if flags & KEY_PREFIX:
        at = text.find("A")
        while at >= 0:
            if text.startswith(KEY_PREFIXES, at) and not glued(text, at, "-"):
                return True
            at = text.find("A", at + 1)
    for flag, pattern in _TOKEN_STARTS:
        if flags & flag:
            for found in pattern.finditer(text):
                if not glued(text, found.start(), "-"):
                    return True
    return False


def _may_hold_ssn_context(facts: Facts) -> bool:
    """The nine digits of an "SSN 123456789" match lie in a digit cluster of nine or more
    digits; its words start at most `_SSN_REACH` characters before them."""
    text = facts.text
    return any(digits >= 9 and _SSN_CONTEXT.search(text, max(0, start - _SSN_REACH),
                                                    min(len(text), end + 1))
               for start, end, digits in facts.all_clusters)


@dataclass(frozen=True, slots=True)
class IbanRecognizer:
    """IBANs, compact or in groups of four; the country's length decides where one ends."""

    entity: str = "iban"
    priority: int = PRIORITY["iban"]
    pattern: re.Pattern[str] = re.compile(r"[A-Z][A-Z][0-9][0-9](?: ?[A-Z0-9]){11,30}")
    needs: int = 0
    needs_any: int = 0

    def find(self, facts: Facts) -> list[Span]:
        # A match starts where the signature reads "AAnn" (two capitals, two digits); stepping
        # over those positions finds what `finditer` would, without a regex pass over the text.
        text, sig = facts.text, facts.sig
        spans: list[Span] = []
        at = _IBAN_START.search(sig)
        while at is not None:
            match = self.pattern.match(text, at.start())
            if match is None:
                at = _IBAN_START.search(sig, at.start() + 1)
                continue
            end = self._end(text, match)
            if end is not None and v.iban(text[match.start():end]):
                spans.append((match.start(), end))
            at = _IBAN_START.search(sig, match.end())
        return spans

    def _end(self, text: str, match: re.Match[str]) -> int | None:
        length = v.iban_length(match.group()[:2])
        if length is None or glued(text, match.start(), ""):
            return None
        end = _end_after(text, match.start(), length)
        if end is None or (end < len(text) and text[end].isalnum()):
            return None
        return end


_IBAN_START = re.compile(rb"AAnn")


def _end_after(text: str, start: int, count: int) -> int | None:
    """Index just past the `count`-th alphanumeric character from `start` (spaces skipped),
    within `count * 2` characters."""
    match = _alnums(count).match(text, start, start + count * 2)
    return None if match is None else match.end()


@functools.cache     # one pattern per IBAN length
def _alnums(count: int) -> re.Pattern[str]:
    return re.compile(rf"(?: *[^\W_]){{{count}}}")     # `[^\W_]` is `str.isalnum`


def builtin(entity: str) -> list[Recognizer]:
    """The recognizers for one built-in entity name (phones live in `proxy.pii.phones`)."""
    pri = PRIORITY[entity]
    match entity:
        case "email":
            return [EmailRecognizer()]
        case "credit_card":
            return [PatternRecognizer(entity, pri, _CARD, v.credit_card, (), "-", True, 13,
                                      needs=DIGITS13)]
        case "ssn":
            context = PatternRecognizer(entity, pri, _SSN_CONTEXT, v.ssn, (
                "SSN", "SS#", "ssn", "ss#", "ecurity", "ECURITY"), "")
            return [PatternRecognizer(entity, pri, _SSN, v.ssn, (), "-", True, 9,
                                      needs=SSN_SHAPED),
                    GatedRecognizer(context, _may_hold_ssn_context, SSN_SHAPED)]
        case "iban":
            return [IbanRecognizer()]
        case "ip_address":
            return [PatternRecognizer(entity, pri, _IPV4, v.ipv4, (), ".", True, 4, ".",
                                      DOTTED, inside_count=3),
                    Ipv6Recognizer()]
        case "secret":
            return _secrets(pri)
    raise ValueError(f"unknown entity {entity!r}")


def _secrets(pri: int) -> list[Recognizer]:
    # `_JWT` and `_PEM` start with a literal, which `re` finds quickly on its own; the other
    # patterns start with a class, so a cheaper test goes first.
    tokens = PatternRecognizer("secret", pri, _TOKENS, None, (), "-")
    return [GatedRecognizer(tokens, _may_hold_token,
                            needs_any=DASH | KEY_PREFIX | UNDERSCORE | SLASH),
            PatternRecognizer("secret", pri, _AWS_SECRET, None, ("ecret", "ECRET"), "",
                              needs=ASSIGN),
            PatternRecognizer("secret", pri, _JWT, v.jwt, (), "-", needs=CAPITAL_J),
            PatternRecognizer("secret", pri, _PEM, None, ("PRIVATE KEY-----",),
                              needs=DASH | CAPITAL_V),
            PatternRecognizer("secret", pri, _URL_PASSWORD, None, ("://",), "",
                              needs=AT | COLON | SLASH)]


def custom(name: str, pattern: str, ignore_case: bool, validator: str | None) -> Recognizer:
    flags = re.IGNORECASE if ignore_case else 0
    check = v.VALIDATORS[validator] if validator else None
    return PatternRecognizer(name, PRIORITY["custom"], re.compile(pattern, flags), check)
