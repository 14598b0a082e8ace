"""Model prices and the cost of one answer, computed from the `usage` the upstream reported.

`Pricing.cost(model, usage)` is the one cost function (budgets and telemetry use it). Prices are USD
per 1M tokens from the packaged `pricing.toml`, overridable from config.

Token rules (OpenAI's): `prompt_tokens` / `input_tokens` include the cached ones, which are charged
at the cached price instead; `completion_tokens` / `output_tokens` already include reasoning tokens,
so reasoning is charged once, at the output price. Embeddings have input only.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("proxy.pricing")

_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_MAX_REMEMBERED = 4096  # model names come from clients: bound what is remembered about them
PER_TOKEN = 1e-6  # prices are per 1M tokens


class ModelPrice(BaseModel):
    """One model's price, as written in pricing.toml or a config's `prices` table."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(0.0, ge=0, description="USD per 1M input tokens.")
    cached_input: float | None = Field(
        None, ge=0, description="USD per 1M cached input tokens; unset: the input price."
    )
    output: float = Field(0.0, ge=0, description="USD per 1M output tokens (reasoning included).")


class PricingConfig(BaseModel):
    """The top-level `[pricing]` section: prices added to or replacing the packaged list."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelPrice] = Field({}, description="USD per 1M tokens, by model name.")
    default: ModelPrice | None = Field(
        None, description="Price of models not listed (replaces the packaged default).")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token (not per million), ready to multiply."""

    input: float
    cached_input: float
    output: float

    @classmethod
    def of(cls, price: ModelPrice) -> Price:
        cached = price.input if price.cached_input is None else price.cached_input
        return cls(price.input * PER_TOKEN, cached * PER_TOKEN, price.output * PER_TOKEN)

    def cost(self, tokens: TokenUsage) -> float:
        uncached = tokens.input - tokens.cached_input
        return uncached * self.input + tokens.cached_input * self.cached_input + \
            tokens.output * self.output

    def bound(self, input_tokens: int, output_tokens: int) -> float:
        """The most an answer can cost: no input assumed cached."""
        return input_tokens * self.input + output_tokens * self.output


class TokenUsage(NamedTuple):
    """Tokens of one answer; `cached_input` is part of `input`, `reasoning` part of `output`."""

    input: int
    cached_input: int
    output: int
    reasoning: int


_CHAT_FIELDS = ("prompt_tokens", "completion_tokens", "prompt_tokens_details",
                "completion_tokens_details")
_RESPONSES_FIELDS = ("input_tokens", "output_tokens", "input_tokens_details",
                     "output_tokens_details")


def read_usage(usage: Mapping[str, Any] | None) -> TokenUsage | None:
    """Tokens from a chat / completions / embeddings `usage` or a Responses API one; None if absent."""
    if type(usage) is not dict and not isinstance(usage, Mapping):
        return None
    if "input_tokens" in usage:  # Responses API
        input_key, output_key, input_details, output_details = _RESPONSES_FIELDS
    elif "prompt_tokens" in usage:
        input_key, output_key, input_details, output_details = _CHAT_FIELDS
    else:
        return None
    # Written out rather than in helpers: this runs once per answer, on the request path.
    total_in = _count(usage.get(input_key))
    details = usage.get(input_details)
    cached = _count(details.get("cached_tokens")) if total_in and (
        type(details) is dict or isinstance(details, Mapping)) else 0
    total_out = _count(usage.get(output_key))
    details = usage.get(output_details)
    reasoning = _count(details.get("reasoning_tokens")) if total_out and (
        type(details) is dict or isinstance(details, Mapping)) else 0
    # tuple.__new__ skips the NamedTuple's Python-level constructor.
    return tuple.__new__(TokenUsage, (total_in, cached if cached < total_in else total_in,
                                      total_out, reasoning if reasoning < total_out else total_out))


def _count(value: Any) -> int:
    if type(value) is int:  # the usual case, answered without the checks below
        return value if value > 0 else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def builtin_table() -> tuple[dict[str, ModelPrice], ModelPrice | None]:
    """The packaged price list and its default price (read from the package, at call time)."""
    text = resources.files("proxy").joinpath("pricing.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    models = {name.lower(): ModelPrice.model_validate(v) for name, v in data.get("models", {}).items()}
    default = data.get("default")
    return models, ModelPrice.model_validate(default) if default is not None else None


class Pricing:
    """Resolves a model name to its price and computes costs.

    Lookup order: the exact name (case-insensitive), the name without a `provider/` prefix, then
    without a dated snapshot suffix. Config entries replace packaged ones of the same name.
    """

    def __init__(self, models: Mapping[str, ModelPrice], default: ModelPrice | None) -> None:
        self._table = {name.lower(): Price.of(price) for name, price in models.items()}
        self.default = Price.of(default) if default is not None else None
        self._resolved: dict[str, Price | None] = {}
        self._warned: set[str] = set()

    @classmethod
    def load(cls, overrides: Mapping[str, ModelPrice] | None = None,
             default: ModelPrice | None = None) -> Pricing:
        """The packaged table with `overrides` on top; `default` replaces the packaged default."""
        models, builtin_default = builtin_table()
        models.update({name.lower(): price for name, price in (overrides or {}).items()})
        return cls(models, default if default is not None else builtin_default)

    def lookup(self, model: str | None) -> Price | None:
        """The model's own price (snapshots resolved), or None when it is not listed."""
        if not model:
            return None
        if model in self._resolved:
            return self._resolved[model]
        price = self._resolve(model.lower())
        if len(self._resolved) >= _MAX_REMEMBERED:
            self._resolved.clear()
        self._resolved[model] = price
        return price

    def _resolve(self, name: str) -> Price | None:
        candidates = [name]
        if "/" in name:
            candidates.append(name.rsplit("/", 1)[1])
        for candidate in list(candidates):
            family = _SNAPSHOT.sub("", candidate)
            if family != candidate:
                candidates.append(family)
        for candidate in candidates:
            if candidate in self._table:
                return self._table[candidate]
        return None

    def price(self, model: str | None) -> Price | None:
        """The model's price, else the default price (with one warning per model), else None."""
        price = self.lookup(model)
        if price is not None or self.default is None:
            return price
        name = model or "<none>"
        if name not in self._warned and len(self._warned) < _MAX_REMEMBERED:
            self._warned.add(name)
            log.warning("no price is known for model %r: charging the default price "
                        "(add it to a budget's `prices` table)", name[:128])
        return self.default

    def cost(self, model: str | None, usage: Mapping[str, Any] | None) -> float | None:
        """USD for an answer's `usage`; None when the usage is unreadable or no price applies."""
        tokens = read_usage(usage)
        price = self.price(model)
        if tokens is None or price is None:
            return None
        return price.cost(tokens)
