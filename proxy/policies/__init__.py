"""The policy registry: which config section turns on which policy, in the onion's order.

Each policy module defines `Config` (a pydantic model: the section, or one item of a `[[list]]`
section) and `async def create(config, ctx) -> Policy | None`. Modules are imported only when their
section is present, so an optional dependency costs nothing when its policy is off.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from proxy.policies.auth import AuthPolicy
from proxy.settings import Settings

if TYPE_CHECKING:
    from proxy.pipeline import Policy, PolicyContext


@dataclass(frozen=True, slots=True)
class PolicySpec:
    section: str
    module: str
    many: bool = False
    always: bool = False
    reads_identity: bool = True  # False: the policy never looks at who is calling


# Outermost first: limits count every request; PII goes before anything is cached, logged or sent;
# cache hits cost no budget.
POLICIES: tuple[PolicySpec, ...] = (
    # Tracing names the caller's team and key name: without [[keys]] the team is the header's,
    # read by the span itself, so tracing alone needs no identity layer.
    PolicySpec("tracing", "proxy.telemetry.policy", reads_identity=False),
    PolicySpec("keys", "proxy.policies.auth", many=True, always=True),
    PolicySpec("experiments", "proxy.policies.experiments", many=True),
    PolicySpec("limits", "proxy.policies.rate_limit", many=True),
    PolicySpec("pii", "proxy.policies.pii", reads_identity=False),
    PolicySpec("cache", "proxy.policies.cache"),
    PolicySpec("semantic_cache", "proxy.policies.semantic_cache"),
    PolicySpec("budgets", "proxy.policies.budget", many=True),
)


def _module(spec: PolicySpec) -> ModuleType:
    return importlib.import_module(spec.module)


def validate_sections(settings: Settings, origins: Mapping[str, str],
                      problems: list[str]) -> dict[str, Any]:
    """Validate each present section with its policy's `Config`; collect `file: key: msg` lines."""
    configs: dict[str, Any] = {}
    for spec in POLICIES:
        raw = getattr(settings, spec.section)
        if not raw and not spec.always:
            continue
        origin = origins.get(spec.section, "<config>")
        try:
            model = _module(spec).Config
        except ImportError as exc:
            problems.append(f"{origin}: {spec.section}: this policy is not available ({exc})")
            continue
        if spec.section == "keys":
            configs[spec.section] = raw
            continue
        items = list(enumerate(raw)) if spec.many else [(None, raw)]
        parsed = []
        for index, item in items:
            where = spec.section if index is None else f"{spec.section}[{index}]"
            try:
                parsed.append(model.model_validate(item))
            except ValidationError as exc:
                for error in exc.errors():
                    loc = ".".join([where, *(str(p) for p in error["loc"])])
                    problems.append(f"{origin}: {loc}: {error['msg']}")
        configs[spec.section] = parsed if spec.many else (parsed[0] if parsed else None)
    return configs


async def create_policies(configs: Mapping[str, Any], ctx: PolicyContext) -> list[Policy]:
    """Build the enabled policies in onion order; a policy may decline (disabled) with None."""
    built: list[tuple[PolicySpec, Policy]] = []
    for spec in POLICIES:
        if spec.section not in configs or configs[spec.section] is None:
            continue
        policy = await _module(spec).create(configs[spec.section], ctx)
        if policy is not None:
            built.append((spec, policy))
    # Without [[keys]] nobody is refused: identity only feeds the policies that read it, derived
    # in a step before the layers (or not at all when none reads it).
    readers = any(spec.reads_identity for spec, _ in built if spec.section != "keys")
    layers: list[Policy] = []
    for spec, policy in built:
        if spec.section == "keys" and not configs["keys"]:
            assert isinstance(policy, AuthPolicy)
            if readers:
                ctx.add_step(policy.identify_into)
            continue
        layers.append(policy)
    return layers
