"""An OpenAI-compatible mock upstream for tests and benchmarks, with scripts and fault switches.

In process: `async with MockUpstream() as mock:`; standalone: `python -m tests.mock_upstream`.
"""

from __future__ import annotations

from tests.mock_upstream.faults import Decision, Failure
from tests.mock_upstream.server import MockUpstream, Received
from tests.mock_upstream.shapes import Reply, ToolCall

__all__ = ["Decision", "Failure", "MockUpstream", "Received", "Reply", "ToolCall"]
