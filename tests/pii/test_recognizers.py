"""Each built-in recognizer finds real values and leaves look-alikes (order numbers, ISBNs,
timestamps, versions, UUIDs, product codes) alone."""

from __future__ import annotations

import pytest

from proxy.pii import PiiEngine


def found(engine: PiiEngine, text: str) -> list[tuple[str, str]]:
    return [(m.entity, text[m.start:m.end]) for m in engine.detector.scan(text)]


POSITIVES = [
    ("email", "write to john.doe+news@example.org today", "john.doe+news@example.org"),
    ("email", "<Ana.María@correo.example.es>", "Ana.María@correo.example.es"),
    ("phone", "call +1-212-555-0123 now", "+1-212-555-0123"),
    ("phone", "call (212) 555-0123 now", "(212) 555-0123"),
    ("phone", "ring 206.269.0743x9150 please", "206.269.0743x9150"),
    ("phone", "UK office: +44 (0)20 7946 0958.", "+44 (0)20 7946 0958"),
    ("phone", "Büro 030 12345678 anrufen", "030 12345678"),
    ("phone", "appelez le 01 23 45 67 89 svp", "01 23 45 67 89"),
    ("phone", "international 0049 30 12345678 works", "0049 30 12345678"),
    ("credit_card", "card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
    ("credit_card", "amex 378282246310005.", "378282246310005"),
    ("credit_card", "mc 5555-5555-5555-4444", "5555-5555-5555-4444"),
    ("ssn", "SSN 536-22-1234 on file", "536-22-1234"),
    ("ssn", "my social security number is 536221234", "536221234"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00 thanks", "DE89 3704 0044 0532 0130 00"),
    ("iban", "pay GB82WEST12345698765432.", "GB82WEST12345698765432"),
    ("ip_address", "host 192.168.10.25 is down", "192.168.10.25"),
    ("ip_address", "v6 2001:db8:85a3::8a2e:370:7334, ok", "2001:db8:85a3::8a2e:370:7334"),
    ("ip_address", "loopback ::1 and fe80::1%eth0", "::1"),
    ("secret", "key sk-proj-abc123DEF456ghi789JKL012mno", "sk-proj-abc123DEF456ghi789JKL012mno"),
    ("secret", "claude sk-ant-api03-" + "a1B2" * 20 + " end", "sk-ant-api03-" + "a1B2" * 20),
    ("secret", "aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("secret", "gh ghp_" + "A1b2C3d4E5" * 3 + "abcdef ok", "ghp_" + "A1b2C3d4E5" * 3 + "abcdef"),
    ("secret", "slack xoxb-123456789012-abcdefABCDEF", "xoxb-123456789012-abcdefABCDEF"),
    ("secret", "google AIzaSyA-1234567890abcdefghijklmnopqrstu", "AIzaSyA-1234567890abcdefghijklmnopqrstu"),
    ("secret", "db postgres://admin:hunter2@db.example.com/app", "hunter2"),
]


@pytest.mark.parametrize(("entity", "text", "value"), POSITIVES)
def test_finds_real_values(engine: PiiEngine, entity: str, text: str, value: str) -> None:
    assert (entity, value) in found(engine, text)


def test_jwt_and_pem_keys_are_secrets(engine: PiiEngine) -> None:
    jwt = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
           "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1c\nabc+/=\n-----END RSA PRIVATE KEY-----"
    text = f"token {jwt} and\n{pem}\n"
    assert found(engine, text) == [("secret", jwt), ("secret", pem)]


NEGATIVES = [
    "Order #4815162342 shipped",
    "order number 2125550123 was refunded",
    "ISBN 978-3-16-148410-0 is a book",
    "at 2024-01-15 10:30:00 UTC",
    "on 15.01.2024 at 10:30",
    "python 3.11.7 and v1.2.3.4 and 1.2.3.4.5",
    "uuid 550e8400-e29b-41d4-a716-446655440000",
    "SKU 4006381333931 in stock",
    "product code 12-3456-7890-12",
    "std::vector<int> and a::b",
    "epoch 1700000000 seconds",
    "MAC 00:1A:2B:3C:4D:5E",
    "the numbers 1 2 3 4 5 6 7 8 9",
    "card-like 4111 1111 1111 1112 fails luhn",
    "ssn-like 000-12-3456 and 666-12-3456 and 900-12-3456 and 123-00-4567",
    "iban-like DE89 3704 0044 0532 0130 01 bad checksum",
    "ip-like 999.10.10.10 and 256.1.1.1",
    "sk-learn is a library; task-oriented, sk-short",
    "AKIA is a prefix only",
    "eyJhbGciOiJIUzI1NiJ9.notajwt.short",
    "email-like user@localhost or @handle or a@b",
    "hash 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "price 1,234,567.89 USD and 10,000,000 units",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_leaves_lookalikes_alone(engine: PiiEngine, text: str) -> None:
    assert found(engine, text) == []


def test_overlap_prefers_secret_over_email(engine: PiiEngine) -> None:
    text = "redis://default:s3cr3t@cache.example.com:6379"
    assert found(engine, text) == [("secret", "s3cr3t")]


def test_only_enabled_entities_are_found(make_engine: object) -> None:
    from proxy.pii import PiiConfig, compile_engine

    engine = compile_engine(PiiConfig(entities=["email"]))
    assert found(engine, "a@example.com 4111 1111 1111 1111") == [("email", "a@example.com")]


def test_allow_list_is_case_insensitive(make_engine: object) -> None:
    from proxy.pii import PiiConfig, compile_engine

    engine = compile_engine(PiiConfig(allow_list=["Support@Example.com"]))
    assert found(engine, "mail support@example.com or bob@example.com") == [
        ("email", "bob@example.com")]


def test_custom_recognizer_with_validator() -> None:
    from proxy.pii import PiiConfig, compile_engine

    engine = compile_engine(PiiConfig.model_validate({
        "entities": [],
        "custom": [{"name": "employee_id", "pattern": r"\bEMP-(?P<v>\d{6})\b"},
                   {"name": "loyalty", "pattern": r"\bL\d{16}\b", "validator": "luhn"}],
    }))
    text = "EMP-123456 has L4111111111111111 not L4111111111111112"
    assert found(engine, text) == [("employee_id", "123456"), ("loyalty", "L4111111111111111")]


def test_email_after_a_text_starting_with_at_sign(engine: PiiEngine) -> None:
    text = "@channel: write to bob@corp.example.net"
    assert found(engine, text) == [("email", "bob@corp.example.net")]
