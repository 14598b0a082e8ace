"""The sidecar's configuration models: server, upstreams, state, virtual keys, and raw policy sections.

Policy sections (`[cache]`, `[[limits]]`, ...) are kept raw here and validated by their own policy's
config model (see `proxy.policies`), so each policy owns its schema. Loading lives in `config.py`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from proxy.pricing import PricingConfig
from proxy.units import ByteSize, Duration

OPENAI_BASE_URL = "https://api.openai.com/v1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Model):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, le=256, description="Processes sharing the port (SO_REUSEPORT).")
    max_body_size: ByteSize = Field(32 << 20, description="Largest request body accepted (413).")
    drain_timeout: Duration = Field(30.0, description="On SIGTERM, how long in-flight work may run.")
    admin_key: SecretStr | None = Field(None, description="Bearer key for /admin/*; unset: off.")

    @field_validator("admin_key")
    @classmethod
    def _empty_admin_key_is_off(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None
    access_log: bool = Field(False, description="Log one line per request (no bodies, no keys).")
    trust_forwarded_for: bool = Field(
        False, description="Take the client ip from X-Forwarded-For (only behind a trusted proxy)."
    )


class Timeouts(_Model):
    connect: Duration = Field(10.0, description="TCP + TLS connect to the upstream.")
    first_byte: Duration = Field(
        600.0, description="Until the upstream's response headers (a whole JSON answer)."
    )
    idle: Duration = Field(
        600.0, description="Longest socket silence, between streamed chunks or before the headers."
    )
    total: Duration = Field(900.0, description="Whole exchange with the upstream, stream included.")


class FallbackTarget(_Model):
    upstream: str = Field(description="Name of the upstream to fall back to.")
    model: str | None = Field(None, description="Model to ask that upstream for instead.")


FailureKind = Literal["5xx", "429", "timeout", "connect", "context_length_exceeded"]


class BreakerConfig(_Model):
    enabled: bool = Field(True, description="Open the circuit on a failing upstream and model.")
    consecutive_failures: int = Field(5, ge=1, description="Failures in a row that open it.")
    error_rate: float = Field(0.5, gt=0, le=1, description="Failure share in `window` that opens it.")
    window: Duration = Field(30.0, description="Window for the error rate.")
    min_requests: int = Field(20, ge=1, description="Requests in the window before the rate counts.")
    cooldown: Duration = Field(30.0, description="How long it stays open before one probe.")


class UpstreamConfig(_Model):
    name: str = Field("openai", description="Name used in headers, logs, spans and fallbacks.")
    base_url: str = Field(OPENAI_BASE_URL, description="Base URL including /v1.")
    api_key: SecretStr | None = Field(
        None, description="Injected upstream key; unset: the client's Authorization is forwarded."
    )
    models: list[str] = Field(["*"], description="Model globs routed here; first match wins.")
    provider: str = Field("openai", description="gen_ai.provider.name for telemetry.")
    headers: dict[str, str] = Field({}, description="Extra headers sent upstream.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts.")
    retries: int = Field(2, ge=0, le=10, description="Retries of safe failures (not after a byte).")
    max_retry_wait: Duration = Field(20.0, description="Cap on a honoured Retry-After.")
    fallbacks: list[str | FallbackTarget] = Field([], description="Tried in order after failure.")
    fallback_on: list[FailureKind] = Field(
        ["5xx", "429", "timeout", "connect"], description="Failures that move on to a fallback."
    )
    pool: str | None = Field(None, description="Upstreams sharing a pool are load-balanced.")
    weight: float = Field(1.0, gt=0, description="Share of the pool's traffic (weighted strategy).")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Circuit breaker.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("pool")
    @classmethod
    def _empty_pool_is_none(cls, value: str | None) -> str | None:
        return value or None


class RoutingConfig(_Model):
    strategy: Literal["weighted", "least_busy", "latency"] = Field(
        "weighted", description="How a pool's upstream is chosen."
    )
    backoff_base: Duration = Field(0.25, description="First retry's backoff cap (full jitter).")
    backoff_max: Duration = Field(8.0, description="Largest backoff between retries.")


class StateConfig(_Model):
    backend: Literal["memory", "redis"] = Field("memory", description="Where shared state lives.")
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL when backend = redis.")
    key_prefix: str = Field("sidecar", description="Prefix of every Redis key.")
    data_dir: str = Field(
        ".llm-sidecar", description="Memory backend: folder for state that must survive restarts."
    )
    timeout: Duration = Field(0.5, description="Redis command timeout.")


class KeyConfig(_Model):
    name: str | None = Field(None, description="Label for logs and admin listings.")
    key: SecretStr | None = Field(None, description="The virtual key itself (prefer key_sha256).")
    key_sha256: str | None = Field(None, description="Hex SHA-256 of the virtual key.")
    user: str | None = Field(None, description="User this key belongs to.")
    team: str | None = Field(None, description="Team this key belongs to.")
    tags: dict[str, str] = Field({}, description="Tags attached to every request with this key.")

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("set exactly one of 'key' or 'key_sha256'")
        if self.key_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.key_sha256):
            raise ValueError("key_sha256 must be 64 hex characters")
        return self


class Settings(BaseSettings):
    """Everything in the config file and policy files, after `${ENV}` interpolation.

    Every key can be overridden by `SIDECAR_<SECTION>__<KEY>` environment variables, which take
    precedence over the files.
    """

    model_config = SettingsConfigDict(
        env_prefix="SIDECAR_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    upstreams: list[UpstreamConfig] = Field([], description="Upstreams; empty: OpenAI.")
    state: StateConfig = Field(default_factory=StateConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    policy_files: list[str] = Field([], description="Globs of policy TOML files.")
    keys: list[KeyConfig] = Field([], description="Virtual keys; empty: the client key is identity.")
    cache: dict[str, Any] | None = None
    semantic_cache: dict[str, Any] | None = None
    pii: dict[str, Any] | None = None
    tracing: dict[str, Any] | None = None
    limits: list[dict[str, Any]] = []
    budgets: list[dict[str, Any]] = []
    experiments: list[dict[str, Any]] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The files arrive as init kwargs; the environment must win over them.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError("upstream names must be unique")
        for upstream in self.upstreams:
            for target in upstream.fallbacks:
                name = target if isinstance(target, str) else target.upstream
                if name not in names:
                    raise ValueError(f"upstream {upstream.name!r} falls back to unknown {name!r}")
        if self.keys and any(u.api_key is None for u in self.upstreams):
            raise ValueError(
                "virtual [[keys]] are configured, so every upstream needs its own api_key "
                "(otherwise virtual keys would be forwarded upstream)"
            )
        return self


POLICY_SECTIONS = ("cache", "semantic_cache", "pii", "tracing", "pricing")
POLICY_LISTS = ("limits", "budgets", "experiments", "keys")
