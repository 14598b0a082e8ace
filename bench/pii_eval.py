"""Precision and recall of the PII recognizers per entity, on a labelled corpus generated with
Faker in several locales, with Presidio's pattern recognizers on the same corpus as reference.

    python bench/pii_eval.py [--samples 3000] [--seed 7] [--no-presidio]

Needs `faker` (the [bench] extra); `presidio-analyzer` is optional: without it only our figures
are printed. A prediction counts when it overlaps a labelled span of the same entity.
"""

from __future__ import annotations

import argparse
import base64
import logging
import random
import string
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.pii import PiiConfig, compile_engine

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
ENTITIES = ("email", "phone", "credit_card", "ssn", "iban", "ip_address", "secret")
Span = tuple[int, int, str]

TEMPLATES = (
    "Hi, please contact me at {x} about the renewal.",
    "{x} is what I gave the agent yesterday.",
    "Customer record: name {name}, value {x}, status active.",
    "Can you check why {x} failed? It started on {date}.",
    "Forwarding this: \"{x}\" (see ticket {order}).",
    "Details -> {x}; alternate: {y}.",
    "My colleague {name} said to use {x} instead of {y}",
)
# Look-alikes a prompt is full of; none of them is PII.
NEAR_MISSES: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"Order #{r.randint(10**8, 10**10)}",
    lambda r: f"order number {r.randint(10**9, 10**10 - 1)}",
    lambda r: f"ISBN 978-{r.randint(0, 9)}-{r.randint(10, 99)}-{r.randint(100000, 999999)}-"
              f"{r.randint(0, 9)}",
    lambda r: f"at 20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
              f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
    lambda r: f"version {r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
    lambda r: f"uuid {_hex(r, 8)}-{_hex(r, 4)}-4{_hex(r, 3)}-a{_hex(r, 3)}-{_hex(r, 12)}",
    lambda r: f"SKU {_ean13(r)}",
    lambda r: f"part no. {r.randint(100, 999)}-{r.randint(1000, 9999)}-{r.randint(100, 999)}",
    lambda r: f"epoch {r.randint(1_500_000_000, 1_800_000_000)}",
    lambda r: f"total {r.randint(1, 999)},{r.randint(100, 999)},{r.randint(100, 999)}."
              f"{r.randint(10, 99)} EUR",
    lambda r: f"commit {_hex(r, 40)}",
    lambda r: f"std::vector<int> took {r.randint(10, 999)} ms",
    lambda r: f"tracking {r.choice(['1Z', 'JD'])}{r.randint(10**15, 10**16)}",
    lambda r: f"on {r.randint(1, 28):02d}.{r.randint(1, 12):02d}.20{r.randint(10, 29)}",
)


def _ean13(r: random.Random) -> str:
    """A product barcode number, check digit included (as printed under every barcode)."""
    body = str(r.randint(10**11, 10**12 - 1))
    total = sum((3 if i % 2 else 1) * int(ch) for i, ch in enumerate(body))
    return body + str((10 - total % 10) % 10)


@dataclass
class Sample:
    text: str
    spans: list[Span] = field(default_factory=list)


def _hex(r: random.Random, n: int) -> str:
    return "".join(r.choices("0123456789abcdef", k=n))


def _groups(digits: str) -> list[str]:
    sizes = [4, 6, 5] if len(digits) == 15 else [4] * (len(digits) // 4) + [len(digits) % 4]
    parts, i = [], 0
    for size in sizes:
        if size:
            parts.append(digits[i:i + size])
            i += size
    return parts


def _token(r: random.Random, alphabet: str, n: int) -> str:
    return "".join(r.choices(alphabet, k=n))


def secret(r: random.Random, fake: Any) -> str:
    alnum = string.ascii_letters + string.digits
    kind = r.randrange(9)
    if kind == 0:
        return "sk-proj-" + _token(r, alnum + "_-", 48) + r.choice(string.digits)
    if kind == 1:
        return "sk-ant-api03-" + _token(r, alnum + "_-", 93)
    if kind == 2:
        return "AKIA" + _token(r, string.ascii_uppercase + string.digits, 16)
    if kind == 3:
        return "ghp_" + _token(r, alnum, 36)
    if kind == 4:
        numbers = "-".join(_token(r, string.digits, 12) for _ in range(2))
        return f"xoxb-{numbers}-{_token(r, alnum, 24)}"
    if kind == 5:
        return "AIza" + _token(r, alnum + "_-", 35)
    if kind == 6:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        header = b64(b'{"alg":"HS256","typ":"JWT"}')
        body = b64(f'{{"sub":"{r.randint(1, 10**6)}","name":"{fake.first_name()}"}}'.encode())
        return f"{header}.{body}.{_token(r, alnum + '_-', 43)}"
    if kind == 7:
        lines = "\n".join(_token(r, alnum + "+/", 64) for _ in range(r.randint(3, 8)))
        return f"-----BEGIN PRIVATE KEY-----\n{lines}\n-----END PRIVATE KEY-----"
    return _token(r, alnum, r.randint(8, 16))  # the password inside a URL, see below


def value(entity: str, r: random.Random, fake: Any) -> tuple[str, str, str]:
    """(text to insert, the labelled value inside it, prefix before the value)."""
    if entity == "email":
        return (v := r.choice([fake.email(), fake.free_email(), fake.company_email()])), v, ""
    if entity == "phone":
        return (v := fake.phone_number()), v, ""
    if entity == "credit_card":
        brand = r.choice(["visa16", "mastercard", "amex", "discover", "jcb16"])
        digits = fake.credit_card_number(card_type=brand)
        if r.random() < 0.5:
            digits = r.choice([" ", "-"]).join(_groups(digits))
        return digits, digits, ""
    if entity == "ssn":
        from faker import Faker
        return (v := Faker("en_US").ssn()), v, ""
    if entity == "iban":
        v = fake.iban()
        if r.random() < 0.4:
            v = " ".join(v[i:i + 4] for i in range(0, len(v), 4))
        return v, v, ""
    if entity == "ip_address":
        return (v := r.choice([fake.ipv4(), fake.ipv4_private(), fake.ipv6()])), v, ""
    s = secret(r, fake)
    if s.isalnum() and not s.startswith(("AKIA", "AIza")):
        prefix = f"postgres://{fake.user_name()}:"
        return f"{prefix}{s}@{fake.domain_name()}/app", s, prefix
    return s, s, ""


def corpus(n: int, seed: int) -> list[Sample]:
    from faker import Faker

    fakers = {loc: Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed + i)
    r = random.Random(seed)
    samples = []
    for _ in range(n):
        fake = fakers[r.choice(LOCALES)]
        template = r.choice(TEMPLATES)
        fill: dict[str, str] = {"name": fake.name(), "date": fake.date(), "order": NEAR_MISSES[0](r)}
        pending: dict[str, str] = {}
        for slot in ("x", "y"):
            if "{" + slot + "}" not in template:
                continue
            if slot == "y" and r.random() < 0.5:
                fill[slot] = r.choice(NEAR_MISSES)(r)
            else:
                pending[slot] = r.choice(ENTITIES)
                fill[slot] = "\0" + slot
        text = template.format(**fill)
        sample = Sample("")
        for slot, entity in pending.items():
            inserted, labelled, prefix = value(entity, r, fake)
            at = text.index("\0" + slot)
            text = text[:at] + inserted + text[at + 2:]
            start = at + len(prefix)
            sample.spans.append((start, start + len(labelled), entity))
        sample.text = text
        samples.append(sample)
    for _ in range(n // 3):
        samples.append(Sample(" and ".join(r.choice(NEAR_MISSES)(r) for _ in range(3)) + "."))
    return samples


def ours(regions: Sequence[str]) -> Callable[[str], list[Span]]:
    engine = compile_engine(PiiConfig(phone_regions=list(regions)))
    return lambda text: [(m.start, m.end, m.entity) for m in engine.detector.scan(text)]


def presidio(regions: Sequence[str]) -> Callable[[str], list[Span]] | None:
    try:
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        logging.getLogger("tldextract").setLevel(logging.CRITICAL)
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )
    except ImportError:
        return None
    names = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "credit_card",
             "US_SSN": "ssn", "IBAN_CODE": "iban", "IP_ADDRESS": "ip_address"}
    presidio_regions = ["UK" if r == "GB" else r for r in regions]
    recognizers = [EmailRecognizer(), PhoneRecognizer(supported_regions=presidio_regions),
                   CreditCardRecognizer(), UsSsnRecognizer(), IbanRecognizer(), IpRecognizer()]

    def scan(text: str) -> list[Span]:
        found = []
        for rec in recognizers:
            for res in rec.analyze(text, rec.supported_entities, None) or ():  # type: ignore[arg-type]
                if res.entity_type in names and res.score > 0:
                    found.append((res.start, res.end, names[res.entity_type]))
        return found

    return scan


Scores = dict[str, tuple[float, float, int, int]]


def evaluate(samples: Sequence[Sample], scan: Callable[[str], list[Span]]) -> Scores:
    tp_pred: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    pred: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    tp_gold: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    gold: dict[str, int] = dict.fromkeys(ENTITIES, 0)
    for sample in samples:
        found = scan(sample.text)
        for s, e, ent in found:
            pred[ent] += 1
            tp_pred[ent] += any(ent == g and s < ge and gs < e for gs, ge, g in sample.spans)
        for gs, ge, g in sample.spans:
            gold[g] += 1
            tp_gold[g] += any(ent == g and s < ge and gs < e for s, e, ent in found)
    return {ent: (tp_pred[ent] / pred[ent] if pred[ent] else 1.0,
                  tp_gold[ent] / gold[ent] if gold[ent] else 0.0, gold[ent], pred[ent])
            for ent in ENTITIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-presidio", action="store_true")
    parser.add_argument("--show-errors", type=str, default="",
                        help="an entity whose misses and false hits to print")
    args = parser.parse_args()
    regions = list(PiiConfig().phone_regions)
    samples = corpus(args.samples, args.seed)
    ours_scan = ours(regions)
    rows = {"llm-sidecar": evaluate(samples, ours_scan)}
    ref = None if args.no_presidio else presidio(regions)
    if ref is None and not args.no_presidio:
        print("NOTE: presidio-analyzer is not installed; showing llm-sidecar only "
              "(pip install presidio-analyzer for the reference column).\n")
    if ref is not None:
        rows["presidio (patterns)"] = evaluate(samples, ref)
    print(f"corpus: {len(samples)} texts, locales {', '.join(LOCALES)}, seed {args.seed}\n")
    print("| entity | labelled | " + " | ".join(f"{n} P | {n} R" for n in rows) + " |")
    print("|---|---:|" + "---:|---:|" * len(rows))
    for ent in ENTITIES:
        cells = []
        for name, res in rows.items():
            p, rc, _, _ = res[ent]
            covered = ent != "secret" or name == "llm-sidecar"   # Presidio has no such entity
            cells += [f"{p:.3f}", f"{rc:.3f}"] if covered else ["n/a", "n/a"]
        print(f"| {ent} | {rows['llm-sidecar'][ent][2]} | " + " | ".join(cells) + " |")
    if args.show_errors:
        _show(samples, ours_scan, args.show_errors)


def _show(samples: Sequence[Sample], scan: Callable[[str], list[Span]], entity: str) -> None:
    for sample in samples:
        found = [f for f in scan(sample.text) if f[2] == entity]
        gold = [g for g in sample.spans if g[2] == entity]
        for s, e, _ in found:
            if not any(s < ge and gs < e for gs, ge, _ in gold):
                print("FALSE HIT", repr(sample.text[s:e]), "in", repr(sample.text[:120]))
        for gs, ge, _ in gold:
            if not any(s < ge and gs < e for s, e, _ in found):
                print("MISSED", repr(sample.text[gs:ge]))


if __name__ == "__main__":
    main()
