"""The sidecar's error tree, and the one place an error becomes OpenAI's error envelope.

    SidecarError                          status  type                    code
    ├── ConfigError                       (startup / check-config; never sent to a client)
    ├── RequestError                      400     invalid_request_error   (per case)
    │   ├── BodyTooLarge                  413     invalid_request_error   request_too_large
    │   └── NotFound                      404     invalid_request_error   unknown_url
    ├── AuthError                         401     invalid_request_error   invalid_api_key
    ├── PolicyRejection                   a policy answered instead of the upstream
    │   ├── RateLimited                   429     requests | tokens       rate_limit_exceeded
    │   ├── BudgetExceeded                429     insufficient_quota      budget_exceeded
    │   ├── PiiDetected                   400     invalid_request_error   pii_detected
    │   └── PolicyFailure                 500     server_error            (fail-closed policy)
    ├── UpstreamError
    │   ├── UpstreamUnreachable           502     upstream_error          upstream_unreachable
    │   ├── UpstreamTimeout               504     upstream_error          upstream_timeout
    │   ├── UpstreamProtocolError         502     upstream_error          upstream_protocol_error
    │   └── UpstreamUnavailable           503     upstream_error          upstream_unavailable
    └── StateBackendError                 503     server_error            state_backend_unavailable

Messages are written for the client: they may name an upstream, a rule or a param, never a key,
a prompt or a PII value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})


class ConfigError(SidecarError):
    """Configuration that cannot be used; `problems` holds one `file: key: message` per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class RequestError(SidecarError):
    status = 400
    type = "invalid_request_error"
    code: str | None = None


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class NotFound(RequestError):
    status = 404
    code = "unknown_url"


class AuthError(SidecarError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PolicyRejection(SidecarError):
    """A policy answered the request itself with an error."""

    status = 400
    type = "invalid_request_error"
    code = "policy_rejected"


class RateLimited(PolicyRejection):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class BudgetExceeded(PolicyRejection):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class PiiDetected(PolicyRejection):
    status = 400
    type = "invalid_request_error"
    code = "pii_detected"


class PolicyFailure(PolicyRejection):
    """A fail-closed policy could not decide, so the request is refused."""

    status = 500
    type = "server_error"
    code = "policy_failure"


class UpstreamError(SidecarError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class StateBackendError(SidecarError):
    status = 503
    type = "server_error"
    code = "state_backend_unavailable"


def envelope(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body, with all four keys always present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_body(exc: SidecarError) -> bytes:
    return orjson.dumps(envelope(exc.message, exc.type, param=exc.param, code=exc.code))


def internal_error_body() -> bytes:
    return orjson.dumps(
        envelope("The sidecar failed to handle this request.", "server_error", code="internal_error")
    )


def error_event(exc: SidecarError, responses_api: bool = False) -> bytes:
    """The SSE event that ends a broken stream; the OpenAI SDKs raise it as an APIError."""
    body = envelope(exc.message, exc.type, param=exc.param, code=exc.code)
    if responses_api:
        payload = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                   **body}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
    return b"data: " + orjson.dumps(body) + b"\n\n"
