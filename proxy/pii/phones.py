"""Phone numbers: digit clusters confirmed with the `phonenumbers` numbering-plan metadata.

International numbers (`+`, `00`) are checked for every country, national ones for the configured
regions; look-alikes (dates, SSNs, dotted quads, order and product numbers) are turned away first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import phonenumbers

from proxy.pii.facts import DIGITS7, Facts
from proxy.pii.recognizers import NON_DIGITS, PRIORITY, WINDOW_AFTER, Span, count_digits, glued

_PHONE = re.compile(
    r"(?:\+|00)?\(?\d+(?:(?:\)?[ ./-]\(?|\)\(?|\()\d+){0,8}\)?"
    r"(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?(?![\w/:-]|[.,]\d)"
)
_PHONE_EXT = re.compile(r"\s?(?:x|ext\.?)\s?\d{1,6}$")
# Dates, the SSN's 3-2-4 shape and dotted quads are never phones, even where the digits dial.
# A date rejects a candidate by its start alone (`_DATE`); the other two must be all of it.
_DATES = r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
_DATE = re.compile(_DATES)
_NEVER_PHONE = re.compile(
    rf"^(?:{_DATES}|\d{{3}}([- ])\d{{2}}\1\d{{4}}$|\d{{1,3}}\.\d{{1,3}}\.\d{{1,3}}\.\d{{1,3}}$)"
)
# Words that introduce a number that is not a phone ("Order #", "invoice no.", "ISBN").
_NOT_PHONE_WORDS = frozenset({
    "order", "invoice", "isbn", "isbn-10", "isbn-13", "sku", "tracking", "ref", "reference",
    "serial", "part", "item", "product", "ticket", "case", "po", "id", "version", "build",
    "account", "acct", "customer", "iban", "epoch", "timestamp",
})
_FILLER_WORDS = frozenset({"no", "no.", "nr", "nr.", "number", "#", "num", "id", "is", ":"})


def _not_phone(before: str) -> bool:
    """True when the last of the (up to three) words before the number, fillers skipped, says
    the number is something else."""
    tail = before.rstrip()
    if tail.endswith("#"):
        return True
    for word in reversed(tail.split()[-3:]):
        word = word.strip(":.#,()").casefold()
        if word and word not in _FILLER_WORDS:
            return word in _NOT_PHONE_WORDS
    return False


_SINGLE_DIGIT = re.compile(r"(?<![0-9])[0-9](?![0-9])")
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
    needs: int = DIGITS7
    needs_any: int = 0
    # Per region, for the length test: (region, national lengths, prefix the number must start
    # with and that does not count, or None, prefix that may be dropped, or None).
    plans: tuple[tuple[str, frozenset[int], str | None, str | None], ...] = ()
    # The same lengths merged, for "does any region fit": regions with the 0 trunk prefix, with
    # an optional 1 (US, CA), and the others.
    merged: tuple[frozenset[int], frozenset[int], frozenset[int]] = (
        frozenset(), frozenset(), frozenset())

    def find(self, facts: Facts) -> list[Span]:
        text = facts.text
        spans: list[Span] = []
        for start, end, digits in facts.clusters:
            if digits < 7 or (_DATE.match(text, start, end) is not None
                               and text.find(" ", start, end) < 0
                               and (start == 0 or text[start - 1] not in "+(")):
                # A date with nothing before it: `_confirm` would turn away the one candidate
                # a spaceless cluster gets, so tables and logs full of dates skip the regex.
                continue
            pos = start
            while pos < end:
                while pos > 0 and text[pos - 1] in "+(" and pos > start - 2:
                    pos -= 1
                match = _PHONE.match(text, pos, min(len(text), end + WINDOW_AFTER))
                found = self._confirm(text, match) if match is not None else None
                if found is not None:
                    spans.append((pos, found))
                    pos = found if found >= end else _next_digit(text, found, end)
                else:
                    # Inside a rejected run only an explicit "+..." or "(..." starts a phone;
                    # anything else there is more likely part of an account or card number.
                    pos = _next_strong_start(text, max(pos, start) + 1, end)
        return spans

    def _confirm(self, text: str, match: re.Match[str]) -> int | None:
        """End of the phone number starting at `match`, or None. A candidate with more digits
        than any phone has is retried up to each of its last spaces (number, then other text)."""
        start = match.start()
        if glued(text, start, "+/.:-"):
            return None
        candidate = match.group()
        screened = "x" not in candidate      # no extension: `_accept` would test this text
        if screened and _NEVER_PHONE.match(candidate):
            return None      # a date (or SSN, or dotted quad), and so is any head of it
        before = text[max(0, start - 30):start]
        if self._accept(candidate, before, screened):
            return match.end()
        if count_digits(candidate) > 15:
            for cut in _spaces_from_right(candidate, 3):
                head = candidate[:cut]
                if cut >= 7 and _STRONG_FORMAT.match(head) and self._accept(head, before):
                    return start + cut
        return None

    def _accept(self, candidate: str, before: str, screened: bool = False) -> bool:
        """`screened`: the caller has already checked `_NEVER_PHONE` on this candidate."""
        number = _PHONE_EXT.sub("", candidate) if "x" in candidate else candidate
        digits = NON_DIGITS.sub("", number)
        if not 7 <= len(digits) <= 15 or (not screened and _NEVER_PHONE.match(number)):
            return False
        if len(_SINGLE_DIGIT.findall(number)) > 2 or _not_phone(before):
            return False     # more than two one-digit groups, or an order, invoice... number
        if number.startswith(("+", "00")):
            return self._international(digits[2:] if number.startswith("00") else digits,
                                       trunk="(0)" in number)
        if _STRONG_FORMAT.match(number):
            # Written like a phone, and the length fits a region.
            zero, one, plain = self.merged
            size, first = len(digits), digits[0]
            return ((first == "0" and size - 1 in zero) or size in plain
                    or (size - 1 in one if first == "1" else size in one))
        return any(_subscriber(number, plan[0]) for plan in self.plans
                   if self._plausible(digits, plan))

    def _international(self, digits: str, trunk: bool) -> bool:
        """A country calling code followed by a possible number length for that country.
        Calling codes are prefix-free, so the first one that matches is the one."""
        for size in (1, 2, 3):
            lengths = self.international.get(int(digits[:size] or "0"))
            if lengths is not None:
                rest = len(digits) - size
                return rest in lengths or (trunk and rest - 1 in lengths)
        return False

    @staticmethod
    def _plausible(digits: str, plan: tuple[str, frozenset[int], str | None, str | None]
                   ) -> bool:
        """Cheap length test before asking `phonenumbers` (a parse costs ~15 µs per region)."""
        _, lengths, required, optional = plan
        if required is not None:
            # National numbers there are written with the 0 trunk prefix.
            return digits.startswith(required) and len(digits) - 1 in lengths
        if optional is not None and digits.startswith(optional):
            return len(digits) - 1 in lengths
        return len(digits) in lengths


def _next_strong_start(text: str, pos: int, limit: int) -> int:
    if text.find(" ", pos, limit) < 0:
        return limit     # the usual case, and one search instead of two
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
    lengths = national_lengths(regions)
    plans = tuple((region, lengths.get(region, frozenset()), "0" if _trunk_zero(region) else None,
                   "1" if region in ("US", "CA") and not _trunk_zero(region) else None)
                  for region in regions)

    def merged(required: str | None, optional: str | None) -> frozenset[int]:
        return frozenset().union(*(sizes for _, sizes, must, may in plans
                                   if must == required and may == optional))

    return PhoneRecognizer(tuple(regions), MappingProxyType(lengths),
                           MappingProxyType(international_lengths()), plans=plans,
                           merged=(merged("0", None), merged(None, "1"), merged(None, None)))
