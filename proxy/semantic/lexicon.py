"""Small closed word lists the semantic guard reads: function words, request verbs, number words.

These are properties of English prompts in general (grammar and the phrasing of requests), not of
any data set; a word belongs here only if swapping it never changes what answer is wanted.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTION_WORDS = _words(
    """
    a an the this that these those it its it's i me my mine we us our you your he him his she her
    they them their there here what what's whats which who whom whose when where why how whether
    is are was were be been being am do does did done doing have has had having can could would
    should shall will may might must 's s of to in on at by for with from into onto about as than
    and or but if so then also just really very some any each every all both either
    up out over off per via vs versus like please pls kindly thanks thank tell give show
    find get got know want wanted need needed help let lets let's say said one ones yes
    ok okay hey hi hello dear sir madam question answer quick quickly briefly exactly actually
    """
)

# Words that open a request without saying what is wanted ("Explain ...", "Calculate ...").
REQUEST_VERBS = _words(
    """
    explain describe define summarize summarise sum write compose create make generate produce
    calculate compute multiply divide add subtract convert translate search look find show tell
    give provide list name identify recommend suggest compare draft rewrite paraphrase outline
    help check determine estimate solve answer can could would do does is are what which who how
    when where why please i in on for
    """
)

NEGATIONS = _words(
    "not no never none nothing nobody neither nor without cannot can't won't don't doesn't "
    "didn't isn't aren't wasn't weren't shouldn't wouldn't couldn't hasn't haven't hadn't "
    "mustn't shan't ain't"
)

# Relations whose two arguments can be swapped without changing the answer (arithmetic ones
# are judged from OPERATORS: addition and multiplication commute).
SYMMETRIC_CUES = _words(
    "between vs versus differ differs difference differences compare comparison compared "
    "distance far apart"
)

UNITS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}
ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "half": 0.5, "twice": 2, "dozen": 12,
    "hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000,
}

# Arithmetic operations by name; two prompts with numbers must ask for the same operations.
OPERATORS = {
    "plus": "add", "add": "add", "added": "add", "sum": "add", "+": "add",
    "minus": "sub", "subtract": "sub", "subtracted": "sub", "less": "sub",
    "times": "mul", "multiply": "mul", "multiplied": "mul", "product": "mul", "x": "mul",
    "*": "mul", "\u00d7": "mul",
    "divided": "div", "divide": "div", "over": "div", "quotient": "div", "/": "div",
    "\u00f7": "div", "ratio": "div",
}
