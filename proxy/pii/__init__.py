"""PII detection and reversible redaction for the `[pii]` policy: recognizers, actions, the
pseudonym map, stream restoration and the per-endpoint field walkers (no I/O here).
"""

from __future__ import annotations

from proxy.pii.config import PiiConfig
from proxy.pii.engine import PiiEngine, Redaction, compile_engine

__all__ = ["PiiConfig", "PiiEngine", "Redaction", "compile_engine"]
