"""What one scan learns about a text before any recognizer runs: a signature with one byte per
character (its class), the digit clusters, and flags for the characters values are made of.

Python's `re` costs a few nanoseconds per character for a pattern that starts with a character
class, and a call per candidate position, so a dozen recognizers each running their regex over
a prompt cost more than the proxy itself. The signature is built in one C pass
(`bytes.translate`); `bytes.find` then skips over it to the few places a value can be, and a
flag test skips every recognizer whose trigger characters the text does not contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Span = tuple[int, int]
Cluster = tuple[int, int, int]     # start, end, number of digits

# Signature classes: `n` for the characters numbers are written with (ASCII digits and the
# separators of `_CLUSTER`), `A` for ASCII capitals, `x` for everything else. Characters outside
# latin-1 are encoded as `?` first, so that offsets in the signature are offsets in the text.
_CLASSES = bytes(
    ord("n") if chr(b) in "0123456789 ()./-"
    else ord("A") if 65 <= b <= 90
    else ord("x")
    for b in range(256)
)
_RUN = b"n" * 7            # the shortest cluster
# A digit cluster: a run of digits and the separators numbers are written with, from its first
# digit to its last, of at least seven characters; every phone, card, SSN and IPv4 address lies
# inside one. Matched at the start of a run of number characters, it spans the run and its
# group is the cluster (None when the run has no digit).
_CLUSTER = re.compile(r"[ ()./-]*(?:([0-9](?:[0-9 ()./-]*[0-9])?)[ ()./-]*)?")
_SEPARATORS = b" ()./-"  # the non-digits a cluster holds: deleting them leaves its digits
# The same clusters found by one pass over the text, for texts with many of them.
_DENSE_CLUSTER = re.compile(r"[0-9][0-9 ()./-]{5,}[0-9]")
_SPARSE = 8          # clusters after which the rest of the text is searched that way
# Inside a cluster: the digit groups every SSN has (3-2-4, or nine bare digits after "SSN").
_SSN_SHAPE = re.compile(r"(?<![0-9])(?:[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}|[0-9]{9})(?![0-9])")

# Flags: which characters and digit clusters the text has. A recognizer lists the flags it
# needs (all of `needs`, one of `needs_any`); the detector runs it only when the text has them.
(AT, COLON, COLONS, ASSIGN, DASH, UNDERSCORE, SLASH, KEY_PREFIX, CAPITAL_J, CAPITAL_V,
 DIGITS7, DIGITS13, DOTTED, SSN_SHAPED) = (1 << i for i in range(14))
# How AWS access key ids and Google API keys start (`KEY_PREFIX`).
KEY_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "A3T", "AIza")


@dataclass(slots=True)
class Facts:
    """One text as the recognizers see it. The detector replaces `clusters` (never changes the
    list in place) by a list without those inside higher-priority matches; `all_clusters`
    keeps them all."""

    text: str
    sig: bytes
    flags: int
    clusters: list[Cluster]
    all_clusters: list[Cluster]


def facts(text: str) -> Facts:
    # One `in` per character: `str.__contains__` with a one-character needle is a memchr.
    sig = text.encode("latin-1", "replace").translate(_CLASSES)
    flags = AT if "@" in text else 0
    if ":" in text:
        flags |= COLON | ASSIGN | (COLONS if text.count(":") > 1 else 0)
    elif "=" in text:
        flags |= ASSIGN
    if "-" in text:
        flags |= DASH
    if "_" in text:
        flags |= UNDERSCORE
    if "/" in text:
        flags |= SLASH
    if "A" in text and _has_key_prefix(text):
        flags |= KEY_PREFIX
    if "J" in text:
        flags |= CAPITAL_J
    if "V" in text:
        flags |= CAPITAL_V
    clusters, shapes = _clusters(text, sig)
    return Facts(text, sig, flags | shapes, clusters, clusters)


def _has_key_prefix(text: str) -> bool:
    # Capital A is rare enough in text for `str.find` (a memchr) to beat a regex pass.
    at = text.find("A")
    while at >= 0:
        if text.startswith(KEY_PREFIXES, at):
            return True
        at = text.find("A", at + 1)
    return False


def _clusters(text: str, sig: bytes) -> tuple[list[Cluster], int]:
    """The clusters in text order, looked for only in runs of at least seven number characters
    (which `bytes.find` skips to; a run holds at most one), and the flags of their shapes."""
    found: list[Cluster] = []
    flags = 0
    at = sig.find(_RUN)
    while at >= 0:
        if len(found) == _SPARSE:
            return _dense(text, at, found, flags)
        run = _CLUSTER.match(text, at)
        assert run is not None      # the pattern matches the empty string
        start, end = run.span(1)
        if end - start >= len(_RUN):
            core = run.group(1)
            digits = len(core.encode("ascii").translate(None, _SEPARATORS))
            found.append((start, end, digits))
            if digits >= 4:
                flags |= _shape(core, digits)
        at = sig.find(_RUN, run.end())
    return found, flags


def _dense(text: str, at: int, found: list[Cluster], flags: int) -> tuple[list[Cluster], int]:
    """The rest of a number-heavy text (a table, a log): one regex pass finds the same clusters
    with less work per cluster than skipping from run to run, and their digits are counted in one
    C pass (the clusters joined by newlines, which none holds, the separators deleted, split)."""
    matches = list(_DENSE_CLUSTER.finditer(text, at))
    groups = [match.group() for match in matches]
    counts = list(map(len, "\n".join(groups).encode("ascii").translate(None, _SEPARATORS)
                      .split(b"\n")))
    # (with no match left, `counts` is [0]: not strict)
    found.extend([(match.start(), match.end(), digits)
                  for match, digits in zip(matches, counts, strict=False)])
    if any(counts[i] >= 4 for i, cluster in enumerate(groups) if cluster.count(".") >= 3):
        flags |= DOTTED
    if not flags & SSN_SHAPED and any(_SSN_SHAPE.search(groups[i])
                                      for i, digits in enumerate(counts) if digits >= 9):
        flags |= SSN_SHAPED
    most = max([c[2] for c in found])
    return found, flags | (DIGITS7 if most >= 7 else 0) | (DIGITS13 if most >= 13 else 0)


def _shape(cluster: str, digits: int) -> int:
    """Flags of one cluster of at least four digits: how many digits, an IPv4 address's dot,
    an SSN's digit groups."""
    flags = DOTTED if cluster.count(".") >= 3 else 0
    if digits >= 7:
        flags |= DIGITS7
    if digits >= 9 and _SSN_SHAPE.search(cluster):
        flags |= SSN_SHAPED
    if digits >= 13:
        flags |= DIGITS13
    return flags
