"""The OpenAI wire protocol: request parsing and validation, SSE framing, error events."""
