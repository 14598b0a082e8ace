"""Microseconds per KB of prompt text for the PII engine, measured directly (no HTTP).

    python bench/pii_bench.py [--seconds 1.0]

Each case runs a bounded loop (at most --max-iterations, at most --seconds of CPU time) and
reports the fastest of five such loops: scan only, a chat-body redaction, stream restoration.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.pii import PiiConfig, Redaction, compile_engine
from proxy.pii.fields import redact_request
from proxy.pii.restore import StreamRestorer

PROSE = (
    "You are a helpful assistant for Acme Corp. Summarise the following support ticket in three "
    "bullet points and suggest a next step. Ticket 48213, opened 2024-03-18 09:12 by the customer: "
    "Since upgrading to version 3.11.2 last week, the export job fails at about 40% with error "
    "E1042. We run it nightly at 02:00 on four servers; two of them (the ones with 64 GB RAM) "
    "succeed. Please reply to this thread; our SLA is 24h. Thanks, the data team. "
)
PII = (
    "Contact Maria Gonzalez at maria.gonzalez@example.es or +34 612 34 56 78; refund to IBAN "
    "ES91 2100 0418 4502 0005 1332, card 4111 1111 1111 1111. Server 10.20.30.40 is affected. "
)
CODE = (
    "def export(rows: list[dict[str, int]]) -> None:\n    for i, row in enumerate(rows):\n"
    "        if i % 1000 == 0:\n            log.info('progress %d of %d', i, len(rows))\n"
    "        writer.writerow({k: v for k, v in row.items() if k != 'id'})\n"
)
TABLE = "".join(f"{i},{i * 37 % 1000},{i * 7919 % 100000}.{i % 100:02d},2024-0{i % 9 + 1}-1{i % 9}\n"
                for i in range(1, 80))


def kb(text: str, size: int = 2048) -> str:
    return (text * (size // len(text) + 1))[:size]


def ticket() -> str:
    """The user prompt of the end-to-end 2 KB benchmark body (an e-mail and a phone number)."""
    body = orjson.loads((Path(__file__).parent / "bodies" / "chat-2kb.json").read_bytes())
    return str(body["messages"][-1]["content"])


CASES = {
    "prose, no PII": kb(PROSE),
    "prose with PII": kb(PROSE + PII),
    "code": kb(CODE),
    "numeric table": kb(TABLE),
    "support ticket (bodies/chat-2kb.json)": ticket(),
}


def per_call(fn: Callable[[], object], seconds: float, max_iterations: int) -> float:
    runs = []
    for _ in range(5):
        count, start = 0, time.process_time()
        deadline = start + seconds / 5
        while count < max_iterations and time.process_time() < deadline:
            fn()
            count += 1
        runs.append((time.process_time() - start) / max(count, 1))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case (bounded)")
    parser.add_argument("--max-iterations", type=int, default=20000)
    args = parser.parse_args()
    engine = compile_engine(PiiConfig(action="pseudonymize"))
    print("| text (2 KB) | scan µs/KB | chat body redaction µs/KB | stream restore µs/KB |")
    print("|---|---:|---:|---:|")
    for name, text in CASES.items():
        size_kb = len(text.encode()) / 1024
        def scan_only(t: str = text) -> None:
            engine.detector.scan(t)

        scan = per_call(scan_only, args.seconds, args.max_iterations)

        def redact(t: str = text) -> None:
            body = {"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": t}]}
            redact_request("chat.completions", body, engine.session())

        full = per_call(redact, args.seconds, args.max_iterations)
        session = engine.session()
        answer = session.request_text(text)
        pieces = [answer[i:i + 16] for i in range(0, len(answer), 16)]

        def stream(s: Redaction = session, p: list[str] = pieces) -> None:
            restorer = StreamRestorer(s.pseudonyms)
            for piece in p:
                restorer.feed(piece)
            restorer.flush()

        restore = per_call(stream, args.seconds, args.max_iterations)
        print(f"| {name} | {scan / size_kb * 1e6:.1f} | {full / size_kb * 1e6:.1f} | "
              f"{restore / size_kb * 1e6:.1f} |")


if __name__ == "__main__":
    main()
