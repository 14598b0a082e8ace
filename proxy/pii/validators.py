"""Checksum and range validators that turn a regex candidate into a confirmed PII match.

Each validator takes the matched text and returns True when it is a real value of its kind;
custom recognizers in policy files refer to them by name (see `VALIDATORS`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

import orjson

# ISO 13616 lengths of the IBAN of each country (SWIFT IBAN registry).
_IBAN_LENGTHS: Mapping[str, int] = MappingProxyType({
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
})

_NON_DIGITS = re.compile(r"[^0-9]+")
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
# IBAN letters as their mod-97 digit strings (A=10 ... Z=35).
_IBAN_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(65, 91)})

# Numbers the SSA has publicly voided or that appeared in advertising.
_VOID_SSNS = frozenset({"078051120", "219099999", "123456789", "111111111", "333333333"})


def digits(text: str) -> str:
    return _NON_DIGITS.sub("", text)


def luhn(text: str) -> bool:
    """True when the digits of `text` pass the Luhn (mod 10) check."""
    nums = digits(text)
    if not nums:
        return False
    total = 0
    for i, ch in enumerate(reversed(nums)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def credit_card(text: str) -> bool:
    """A known issuer prefix with that issuer's length, a usual grouping, and Luhn."""
    nums = digits(text)
    if not 13 <= len(nums) <= 19 or not _issuer_length_ok(nums):
        return False
    if len(nums) == 13 and ean13(nums):
        return False     # 13-digit Visas are retired; a valid EAN-13 is a product code
    groups = [len(g) for g in text.replace("-", " ").split()]
    if len(groups) > 1 and groups not in ([4, 6, 5], [4, 6, 4]) and not (
            all(g == 4 for g in groups[:-1]) and groups[-1] in (3, 4)):
        return False
    return luhn(nums)


def ean13(nums: str) -> bool:
    """The GS1 check digit of a 13-digit product code (weights 1, 3, 1, 3...)."""
    total = sum((3 if i % 2 else 1) * (ord(ch) - 48) for i, ch in enumerate(nums[:12]))
    return len(nums) == 13 and (10 - total % 10) % 10 == ord(nums[12]) - 48


def _issuer_length_ok(nums: str) -> bool:
    two, three, four, size = int(nums[:2]), int(nums[:3]), int(nums[:4]), len(nums)
    if nums[0] == "4":                                        # Visa
        return size in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:               # Mastercard
        return size == 16
    if two in (34, 37):                                       # American Express
        return size == 15
    if two in (30, 36, 38, 39):                               # Diners Club
        return size in (14, 16, 19)
    if two in (35, 62, 65) or four == 6011 or 644 <= three <= 649:  # JCB, UnionPay, Discover
        return size >= 16
    # Maestro: 13-digit runs starting 5/6 are far more often EAN-13 product codes.
    return two in (50, 56, 57, 58, 63, 67) and size >= 16


def ssn(text: str) -> bool:
    """US SSN with the ranges the SSA never issues rejected (000, 666, 9xx, 00, 0000)."""
    nums = digits(text)
    if len(nums) != 9 or nums in _VOID_SSNS or len(set(nums)) == 1:
        return False
    area, group, serial = nums[:3], nums[3:5], nums[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def iban(text: str) -> bool:
    """Country length from the IBAN registry and the ISO 7064 mod-97 check."""
    compact = text.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    return int((compact[4:] + compact[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def iban_length(country: str) -> int | None:
    """The IBAN length of a country code, or None when the country has no IBAN."""
    return _IBAN_LENGTHS.get(country.upper())


def ipv4(text: str) -> bool:
    if _DOTTED_QUAD.fullmatch(text):
        # What `ipaddress` accepts of this shape, without its cost: octets up to 255 and no
        # leading zeros.
        return all(o == "0" or (o[0] != "0" and int(o) <= 255) for o in text.split("."))
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def ipv6(text: str) -> bool:
    address = text.split("%", 1)[0]
    if not any(ch.isdigit() for ch in address) or address.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def jwt(text: str) -> bool:
    """Three base64url parts whose first part decodes to a JSON header naming an `alg`."""
    parts = text.split(".")
    if len(parts) != 3:
        return False
    try:
        header = orjson.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


VALIDATORS: Mapping[str, Callable[[str], bool]] = MappingProxyType({
    "luhn": luhn,
    "credit_card": credit_card,
    "ssn": ssn,
    "iban": iban,
    "ipv4": ipv4,
    "ipv6": ipv6,
    "jwt": jwt,
    "ean13": ean13,
})
