"""Phone numbers: digit clusters confirmed with the `phonenumbers` numbering-plan metadata.

International numbers (`+`, `00`) are checked for every country, national ones for the configured
regions; look-alikes (dates, SSNs, dotted quads, order and product numbers) are turned away first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import phonenumbers

from proxy.pii.recognizers import (
    NON_DIGITS,
    PRIORITY,
    WINDOW_AFTER,
    Cluster,
    Span,
    count_digits,
    glued,
)

_PHONE = re.compile(
    r"(?:\+|00)?\(?\d+(?:(?:\)?[ ./-]\(?|\)\(?|\()\d+){0,8}\)?"
    r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?(?![\w/:-]|[.,]\d)"
)
_PHONE_EXT = re.compile(r"\s?(?:x|ext\.?)\s?\d{1,6}$")
# Dates, the SSN's 3-2-4 shape and dotted quads are never phones, even where the digits dial.
_NEVER_PHONE = re.compile(
    r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{3}([- ])\d{2}\1\d{4}$"
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$)"
)
# Words that introduce a number that is not a phone ("Order #", "invoice no.", "ISBN").
_NOT_PHONE_WORDS = frozenset({
    "order", "invoice", "isbn", "isbn-10", "isbn-13", "sku", "tracking", "ref", "reference",
    "serial", "part", "item", "product", "ticket", "case", "po", "id", "version", "build",
    "account", "acct", "customer", "iban", "epoch", "timestamp",
})
_FILLER_WORDS = frozenset({"no", "no.", "nr", "nr.", "number", "#", "num", "id", "is", ":"})


def _not_phone(before: str) -> bool:
    tail = before.rstrip()
    if tail.endswith("#"):
        return True
    words = [w.strip(":.#,()").casefold() for w in tail.split()[-3:]]
    while words and (words[-1] in _FILLER_WORDS or not words[-1]):
        words.pop()
    return bool(words) and words[-1] in _NOT_PHONE_WORDS


_STRONG_FORMAT = re.compile(
    r"^(?:\+|00|\(\d{2,5}\)|\d{3}[-. ]\d{3}[-. ]\d{4}$|\d{3}[-. ]\d{4}$|0\d{1,4}[ -/]\d)"
)


@dataclass(frozen=True, slots=True)
class PhoneRecognizer:
    """Phone numbers: a cheap candidate regex, then the `phonenumbers` metadata for each region.

    Numbers written with a `+`/`00` prefix, brackets or a usual grouping need only be *possible*
    (right length for the country); bare digit runs must be *valid* (an allocated range), and
    runs introduced as an order, invoice, ISBN, SKU... number are never phones.
    """

    regions: Sequence[str]
    lengths: Mapping[str, frozenset[int]]     # national significant number lengths per region
    international: Mapping[int, frozenset[int]]   # the same per country calling code
    entity: str = "phone"
    priority: int = PRIORITY["phone"]

    def find(self, text: str, numeric: Sequence[Cluster]) -> Iterator[Span]:
        for start, end, digits in numeric:
            if digits < 7:
                continue
            pos = start
            while pos < end:
                while pos > 0 and text[pos - 1] in "+(" and pos > start - 2:
                    pos -= 1
                match = _PHONE.match(text, pos, min(len(text), end + WINDOW_AFTER))
                found = self._confirm(text, match) if match is not None else None
                if found is not None:
                    yield pos, found
                    pos = _next_digit(text, found, end)
                else:
                    # Inside a rejected run only an explicit "+..." or "(..." starts a phone;
                    # anything else there is more likely part of an account or card number.
                    pos = _next_strong_start(text, max(pos, start) + 1, end)

    def _confirm(self, text: str, match: re.Match[str]) -> int | None:
        """End of the phone number starting at `match`, or None. A candidate with more digits
        than any phone has is retried up to each of its last spaces (number, then other text)."""
        start = match.start()
        if glued(text, start, "+/.:-"):
            return None
        before = text[max(0, start - 30):start]
        candidate = match.group()
        if self._accept(candidate, before):
            return match.end()
        if count_digits(candidate) > 15:
            for cut in _spaces_from_right(candidate, 3):
                head = candidate[:cut]
                if cut >= 7 and _STRONG_FORMAT.match(head) and self._accept(head, before):
                    return start + cut
        return None

    def _accept(self, candidate: str, before: str) -> bool:
        number = _PHONE_EXT.sub("", candidate) if "x" in candidate else candidate
        if not 7 <= count_digits(number) <= 15 or _NEVER_PHONE.match(number) or _not_phone(before):
            return False
        groups = [g for g in NON_DIGITS.split(number) if g]
        if sum(len(g) == 1 for g in groups) > 2:
            return False
        digits = NON_DIGITS.sub("", number)
        if number.startswith(("+", "00")):
            return self._international(digits[2:] if number.startswith("00") else digits,
                                       trunk="(0)" in number)
        regions = [region for region in self.regions if self._plausible(digits, region)]
        if _STRONG_FORMAT.match(number):
            return bool(regions)     # written like a phone, and the length fits a region
        return any(_subscriber(number, region) for region in regions)

    def _international(self, digits: str, trunk: bool) -> bool:
        """A country calling code followed by a possible number length for that country.
        Calling codes are prefix-free, so the first one that matches is the one."""
        for size in (1, 2, 3):
            lengths = self.international.get(int(digits[:size] or "0"))
            if lengths is not None:
                rest = len(digits) - size
                return rest in lengths or (trunk and rest - 1 in lengths)
        return False

    def _plausible(self, digits: str, region: str) -> bool:
        """Cheap length test before asking `phonenumbers` (a parse costs ~15 µs per region)."""
        if _trunk_zero(region):
            if not digits.startswith("0"):
                return False     # national numbers there are written with the 0 trunk prefix
            digits = digits[1:]
        elif region in ("US", "CA") and digits.startswith("1"):
            digits = digits[1:]
        return len(digits) in self.lengths.get(region, frozenset())


def _next_strong_start(text: str, pos: int, limit: int) -> int:
    found = [i for i in (text.find(" +", pos, limit), text.find(" (", pos, limit)) if i >= 0]
    return min(found) + 2 if found else limit


def _next_digit(text: str, pos: int, limit: int) -> int:
    while pos < limit and not text[pos].isdigit():
        pos += 1
    return pos


def _spaces_from_right(text: str, count: int) -> list[int]:
    cuts = [i for i, ch in enumerate(text) if ch == " "]
    return cuts[::-1][:count] if len(cuts) <= count else cuts[:count][::-1]


def _subscriber(number: str, region: str) -> bool:
    """A bare digit run must be a subscriber's number in an allocated range: special-service
    and premium ranges (which cover many ten-digit timestamps and product codes) do not count."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return (phonenumbers.is_valid_number(parsed)
            and phonenumbers.number_type(parsed) in _SUBSCRIBER_TYPES)


_SUBSCRIBER_TYPES = frozenset({
    phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
})


def _trunk_zero(region: str) -> bool:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return metadata is not None and metadata.national_prefix == "0"


def _lengths(metadata: Any) -> frozenset[int] | None:
    general = getattr(metadata, "general_desc", None)
    if general is None:
        return None
    return frozenset((general.possible_length or ()) + (general.possible_length_local_only or ()))


def national_lengths(regions: Sequence[str]) -> dict[str, frozenset[int]]:
    """Possible national-number lengths of each region, from the `phonenumbers` metadata."""
    lengths: dict[str, frozenset[int]] = {}
    for region in regions:
        found = _lengths(phonenumbers.PhoneMetadata.metadata_for_region(region))
        if found:
            lengths[region] = found
    return lengths


def international_lengths() -> dict[int, frozenset[int]]:
    """Possible national-number lengths behind every country calling code."""
    lengths: dict[int, frozenset[int]] = {}
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        if regions and regions[0] == "001":
            metadata = phonenumbers.PhoneMetadata.metadata_for_nongeo_region(code)
        else:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region(regions[0]) if regions else None
        found = _lengths(metadata)
        if found:
            lengths[code] = found
    return lengths


def phone_recognizer(regions: Sequence[str]) -> PhoneRecognizer:
    return PhoneRecognizer(tuple(regions), MappingProxyType(national_lengths(regions)),
                           MappingProxyType(international_lengths()))
