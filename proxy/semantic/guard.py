"""The verification step after nearest-neighbour search: reject candidates that mean something else.

Close vectors are necessary, not sufficient. Each rule compares one facet both prompts must share
(numbers, quoted text, names, polarity, argument order, the filled slot); any mismatch is a miss.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.semantic.lexicon import (
    FUNCTION_WORDS,
    NEGATIONS,
    OPERATORS,
    ORDINALS,
    REQUEST_VERBS,
    SYMMETRIC_CUES,
    TENS,
    UNITS,
)

_TOKEN = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:\+\+|#)"  # C++, C#, F#
    r"|\d+(?:[.,]\d+)*"
    r"|[^\W\d_]+(?:['\u2019][^\W\d_]+)*"
    r"|[*+/\u00d7\u00f7]"
)
_QUOTED = re.compile(r"(?<!\w)['\u2018\"\u201c`](.+?)['\u2019\"\u201d`](?!\w)")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n])[\s\"'(\[]*$")
# Rare words at the start of a sentence are likely names ("Dracula was written by whom?").
_COMMON_RANK = 8000
_CLITICS = frozenset({"s", "d", "ll", "m", "re", "ve"})
_NEAR_TOKENS = 3
_COMMUTATIVE = frozenset({"add", "mul"})
_TENS_DIGITS = frozenset(str(v) for v in TENS.values())


@dataclass(frozen=True, slots=True)
class Facets:
    """What the rules compare, extracted once per prompt."""

    words: tuple[str, ...]  # lowercased tokens, number words folded to digits
    numbers: tuple[str, ...]
    quoted: frozenset[str]
    entities: frozenset[str]
    negated: bool
    symmetric: bool
    operators: frozenset[str]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a cached prompt may answer the new one, and the rule that decided."""

    ok: bool
    rule: str = "ok"


def _norm_number(text: str) -> str:
    value = text.replace(",", "")
    if "." in value:
        return value.rstrip("0").rstrip(".") or "0"
    return value.lstrip("0") or "0"


def _fold(tokens: list[str]) -> list[str]:
    """Lowercase; number words become digits ("twenty-one" -> "21", "five" -> "5").

    One output per token, so it lines up with the tokens: the second word of a merged number
    ("twenty-one") becomes "".
    """
    out: list[str] = []
    for tok in tokens:
        low = tok.lower()
        head, _, tail = low.replace("\u2019", "'").partition("'")
        if tail in _CLITICS:
            low = head
        unit = UNITS.get(low, 1 if low == "one" else None)
        if unit is not None and out and out[-1] in _TENS_DIGITS:
            out[-1] = str(int(out[-1]) + unit)
            out.append("")
        elif low in UNITS or low in TENS or low in ORDINALS:
            out.append(_norm_number(str({**UNITS, **TENS, **ORDINALS}[low])))
        elif low[:1].isdigit():
            out.append(_norm_number(low))
        else:
            out.append(low)
    return out


def _is_common(word: str, vocab: Mapping[str, int]) -> bool:
    if word in FUNCTION_WORDS or word in REQUEST_VERBS:
        return True
    rank = vocab.get(word)
    return rank is not None and rank < _COMMON_RANK


def extract(text: str, vocab: Mapping[str, int]) -> Facets:
    """Tokenise one prompt into the facets the rules compare."""
    matches = list(_TOKEN.finditer(text))
    aligned = _fold([m.group(0) for m in matches])
    words = [w for w in aligned if w]
    entities: set[str] = set()
    for m, word in zip(matches, aligned, strict=True):
        tok = m.group(0)
        if not word or word in FUNCTION_WORDS or word[:1].isdigit() or not any(
                c.isupper() for c in tok):
            continue
        initial = _SENTENCE_START.search(text, 0, m.start()) is not None
        if not initial or not _is_common(word, vocab):
            entities.add(word)
    quoted = frozenset(" ".join(w for w in _fold(_TOKEN.findall(q)) if w)
                       for q in _QUOTED.findall(text))
    numbers = tuple(w for w in words if w[:1].isdigit())
    operators = frozenset(OPERATORS[w] for w in words if w in OPERATORS)
    commutes = len(numbers) >= 2 and bool(operators) and operators <= _COMMUTATIVE
    return Facets(
        words=tuple(words),
        numbers=numbers,
        quoted=quoted,
        entities=frozenset(entities),
        negated=any(w in NEGATIONS or w.endswith("n't") for w in words),
        symmetric=commutes or any(w in SYMMETRIC_CUES for w in words),
        operators=operators,
    )


def _near(a: str, b: str) -> bool:
    """Same word up to one typo (edit or swap of neighbours) or an inflection."""
    if a == b:
        return True
    if min(len(a), len(b)) >= 5 and a[:5] == b[:5] and abs(len(a) - len(b)) <= 3:
        return True
    if min(len(a), len(b)) < 5 or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def _covered(word: str, others: tuple[str, ...]) -> bool:
    return any(_near(word, other) for other in others)


def _rule_numbers(a: Facets, b: Facets) -> bool:
    return Counter(a.numbers) == Counter(b.numbers)


def _rule_operators(a: Facets, b: Facets) -> bool:
    return not (a.numbers and b.numbers) or a.operators == b.operators


def _rule_quoted(a: Facets, b: Facets) -> bool:
    return a.quoted == b.quoted


def _rule_entities(a: Facets, b: Facets) -> bool:
    return all(_covered(e, b.words) for e in a.entities) and all(
        _covered(e, a.words) for e in b.entities
    )


def _rule_negation(a: Facets, b: Facets) -> bool:
    return a.negated == b.negated


def _close_pairs(words: tuple[str, ...], anchors: set[str]) -> set[tuple[str, str]]:
    """Ordered pairs of anchors at most a few tokens apart: the ones a relation links."""
    spots = [(i, w) for i, w in enumerate(words) if w in anchors]
    return {
        (x, y) for n, (i, x) in enumerate(spots) for j, y in spots[n + 1 :]
        if x != y and j - i <= _NEAR_TOKENS
    }


def _rule_order(a: Facets, b: Facets) -> bool:
    """Linked names and numbers keep their order ("Paris to Berlin"), unless the relation is
    symmetric ("between Paris and Berlin", "14 times 76")."""
    if a.symmetric and b.symmetric:
        return True
    anchors = set(a.entities | b.entities) | set(a.numbers) | set(b.numbers)
    pairs_a, pairs_b = _close_pairs(a.words, anchors), _close_pairs(b.words, anchors)
    # A pair seen both ways within one prompt ("0 to 5 to 0") says nothing about direction.
    one_way_b = {(x, y) for x, y in pairs_b if (y, x) not in pairs_b}
    return not any((y, x) in one_way_b for x, y in pairs_a if (y, x) not in pairs_a)


def _attached(words: tuple[str, ...], i: int) -> list[str]:
    """The content word right after the number at i ("100 grams"), if there is one."""
    nxt = words[i + 1] if i + 1 < len(words) else ""
    if len(nxt) > 1 and not nxt[:1].isdigit() and nxt not in FUNCTION_WORDS:
        return [nxt]
    return []


def _rule_units(a: Facets, b: Facets) -> bool:
    """A word after a number in one prompt, if the other has it, must follow the same number."""
    for x, y in ((a, b), (b, a)):
        for i, num in enumerate(x.words):
            if not num[:1].isdigit():
                continue
            theirs = [w for j, n in enumerate(y.words) if n == num for w in _attached(y.words, j)]
            for word in _attached(x.words, i):
                if word in y.words and word not in theirs:
                    return False
    return True


def _content(words: list[str]) -> list[str]:
    return [w for w in words if w not in FUNCTION_WORDS]


def _rule_slot(a: Facets, b: Facets) -> bool:
    """After shared context, one content word swapped for another ("haiku" -> "sonnet")."""
    matcher = difflib.SequenceMatcher(None, a.words, b.words, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "replace" or i1 == 0 or j1 == 0:
            continue
        ca, cb = _content(list(a.words[i1:i2])), _content(list(b.words[j1:j2]))
        if ca and cb and not all(_covered(w, tuple(cb)) for w in ca):
            return False
    return True


RULES: tuple[tuple[str, Callable[[Facets, Facets], bool]], ...] = (
    ("numbers", _rule_numbers),
    ("operators", _rule_operators),
    ("quoted", _rule_quoted),
    ("entities", _rule_entities),
    ("negation", _rule_negation),
    ("order", _rule_order),
    ("units", _rule_units),
    ("slot", _rule_slot),
)


@dataclass(frozen=True, slots=True)
class Guard:
    """Runs every enabled rule; the first that fails names the verdict."""

    vocab: Mapping[str, int]
    disabled: frozenset[str] = frozenset()

    def facets(self, text: str) -> Facets:
        return extract(text, self.vocab)

    def check(self, query: Facets, cached: Facets) -> Verdict:
        for name, rule in RULES:
            if name not in self.disabled and not rule(query, cached):
                return Verdict(ok=False, rule=name)
        return Verdict(ok=True)
