"""The `[pii]` policy-file section: which entities to find, what to do with them, and extras.

Validated once at startup; `proxy.pii.detector.compile_engine` turns it into the runtime engine.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from proxy.pii.validators import VALIDATORS

Action = Literal["redact", "mask", "hash", "pseudonymize", "block"]
BUILTIN_ENTITIES: tuple[str, ...] = (
    "email", "phone", "credit_card", "ssn", "iban", "ip_address", "secret",
)
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IT", "NL")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class CustomRecognizer(BaseModel):
    """A site-specific entity: a regex, optionally confirmed by a named validator."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", description="Entity name (lowercase, e.g. 'employee_id'); "
                      "its placeholder label is the upper-cased name.")
    pattern: str = Field(default="", description="Python regular expression; a group named `v` "
                         "narrows the match to that group.")
    ignore_case: bool = Field(default=False, description="Match the pattern case-insensitively.")
    validator: str | None = Field(default=None, description="Optional validator name: "
                                  + ", ".join(sorted(VALIDATORS)) + ".")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lowercase letters, digits and '_', starting with a letter")
        if value in BUILTIN_ENTITIES:
            raise ValueError(f"{value!r} is a built-in entity; pick another name")
        return value

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        if not value:
            raise ValueError("a custom recognizer needs a pattern")
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        if compiled.match(""):
            raise ValueError("the pattern must not match the empty string")
        return value

    @field_validator("validator")
    @classmethod
    def _check_validator(cls, value: str | None) -> str | None:
        if value is not None and value not in VALIDATORS:
            raise ValueError(f"unknown validator {value!r}; known: {', '.join(sorted(VALIDATORS))}")
        return value


class PiiConfig(BaseModel):
    """`[pii]`: redaction of personal data and secrets on requests and (optionally) responses."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Scan requests for PII (the section's "
                          "presence turns it on; set false to keep the section but disable it).")
    action: Action = Field(default="redact", description="Default action for every entity: "
                           "redact | mask | hash | pseudonymize | block.")
    entities: list[str] = Field(default_factory=lambda: list(BUILTIN_ENTITIES),
                                description="Built-in entities to detect: "
                                + ", ".join(BUILTIN_ENTITIES) + ".")
    responses: bool = Field(default=False, description="Also scan model output for PII that "
                            "was not in the request (streams use a bounded hold-back).")
    actions: dict[str, Action] = Field(default_factory=dict, description="Per-entity action "
                                       "overrides, e.g. { secret = \"block\" }.")
    custom: list[CustomRecognizer] = Field(default_factory=list, description="Extra recognizers "
                                           "([[pii.custom]] tables: name, pattern, validator).")
    allow_list: list[str] = Field(default_factory=list, description="Values never redacted "
                                  "(compared case-insensitively), e.g. your support address.")
    hash_key: SecretStr = Field(default=SecretStr(""), description="HMAC key for the `hash` "
                                "action; use env interpolation: \"${PII_HASH_KEY}\".")
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_REGIONS),
                                     description="ISO country codes whose national phone formats "
                                     "are recognised; numbers starting + or 00 always are.")
    holdback_chars: int = Field(default=64, ge=16, le=4096, description="Output characters held "
                                "back in streams while a match may still be growing.")

    @field_validator("entities")
    @classmethod
    def _check_entities(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in BUILTIN_ENTITIES]
        if unknown:
            raise ValueError(f"unknown entities {unknown}; known: {', '.join(BUILTIN_ENTITIES)}")
        return list(dict.fromkeys(value))

    @field_validator("phone_regions")
    @classmethod
    def _check_regions(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not re.fullmatch(r"[A-Z]{2}", r)]
        if bad:
            raise ValueError(f"regions must be two-letter upper-case ISO codes, got {bad}")
        return value

    @model_validator(mode="after")
    def _check_cross(self) -> PiiConfig:
        names = set(self.entities) | {c.name for c in self.custom}
        unknown = sorted(set(self.actions) - names)
        if unknown:
            raise ValueError(f"actions: {unknown} are not enabled entities or custom recognizers")
        uses_hash = self.action == "hash" or "hash" in self.actions.values()
        if uses_hash and len(self.hash_key.get_secret_value()) < 16:
            raise ValueError("the hash action needs hash_key of at least 16 characters "
                             "(e.g. hash_key = \"${PII_HASH_KEY}\")")
        if len({c.name for c in self.custom}) != len(self.custom):
            raise ValueError("custom recognizer names must be unique")
        return self

    def action_for(self, entity: str) -> Action:
        return self.actions.get(entity, self.action)
