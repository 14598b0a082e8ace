"""llm-sidecar: a reverse proxy that governs an app's OpenAI-compatible LLM traffic."""

__version__ = "0.1.0"
