"""Spans and metrics exported over OTLP/HTTP to a receiver in the test, decoded with
opentelemetry-proto; and an unreachable collector that costs no request and one log line."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import StartSidecar
from tests.harness import LoopThread
from tests.telemetry.helpers import CALLER_SPAN, CALLER_TRACE, TRACEPARENT, providers

MARKER = "zebra-quartz-7781 my card is 4111 1111 1111 1111"


class Receiver:
    """A minimal OTLP/HTTP collector: keeps every decoded export request and its raw bytes."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.raw: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(body)
        self.traces.append(ExportTraceServiceRequest.FromString(body))
        return _protobuf(ExportTraceServiceResponse().SerializeToString())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.metrics.append(ExportMetricsServiceRequest.FromString(body))
        return _protobuf(ExportMetricsServiceResponse().SerializeToString())

    def spans(self) -> list[Span]:
        return [span for request in self.traces for resource in request.resource_spans
                for scope in resource.scope_spans for span in scope.spans]

    def metric_names(self) -> set[str]:
        return {metric.name for request in self.metrics for resource in request.resource_metrics
                for scope in resource.scope_metrics for metric in scope.metrics}


def _protobuf(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/x-protobuf")


@pytest.fixture
def receiver(loop_thread: LoopThread) -> Iterator[Receiver]:
    found = Receiver()
    loop_thread.run(found.start())
    yield found
    assert found.runner is not None
    loop_thread.run(found.runner.cleanup())


@pytest.fixture(autouse=True)
def quick_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")


def wait_for(check: Callable[[], Any], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "nothing arrived at the receiver"
        time.sleep(0.02)


def _tracing(endpoint: str, extra: str = "") -> str:
    return f'[tracing]\nendpoint = "{endpoint}"\nmetric_interval = "100ms"\n{extra}'


def test_trace_over_otlp_continues_the_callers_trace(receiver: Receiver,
                                                     start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(_tracing(receiver.url))
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT})
    wait_for(lambda: len(receiver.spans()) >= 2)
    by_kind = {span.kind: span for span in receiver.spans()}
    server, client = by_kind[Span.SPAN_KIND_SERVER], by_kind[Span.SPAN_KIND_CLIENT]
    assert server.trace_id.hex() == CALLER_TRACE
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert client.trace_id.hex() == CALLER_TRACE
    assert client.parent_span_id == server.span_id
    assert client.name == "chat gpt-4o-mini"
    resource = {a.key: a.value.string_value
                for a in receiver.traces[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "llm-sidecar"
    wait_for(lambda: "gen_ai.client.operation.duration" in receiver.metric_names())


def test_no_prompt_text_is_exported_by_default(receiver: Receiver,
                                               start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(_tracing(receiver.url))
    client = sidecar.client()
    client.chat.completions.create(model="gpt-4o-mini",
                                   messages=[{"role": "user", "content": MARKER}])
    list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                        messages=[{"role": "user", "content": MARKER}]))
    wait_for(lambda: len(receiver.spans()) >= 4)
    exported = b"".join(receiver.raw)
    assert b"zebra-quartz" not in exported and b"4111" not in exported
    assert b"Echo" not in exported  # nor the answer


def test_captured_content_is_the_redacted_prompt(receiver: Receiver,
                                                 start_sidecar: StartSidecar) -> None:
    pii = '\n[pii]\naction = "redact"\nentities = ["credit_card"]\n'
    sidecar = start_sidecar(_tracing(receiver.url, "capture_content = true\n") + pii)
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": MARKER}])
    wait_for(lambda: any(s.kind == Span.SPAN_KIND_CLIENT for s in receiver.spans()))
    client = next(s for s in receiver.spans() if s.kind == Span.SPAN_KIND_CLIENT)
    captured = {a.key: a.value.string_value for a in client.attributes}
    assert "zebra-quartz-7781" in captured["gen_ai.input.messages"]
    assert "4111" not in b"".join(receiver.raw).decode("latin-1")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_dead_collector_costs_no_request_and_one_log_line(
        start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    sidecar = start_sidecar(_tracing(dead, 'timeout = "200ms"\n'))
    caplog.set_level(logging.INFO)
    client = sidecar.client()
    tracer_provider = providers(sidecar).tracer_provider
    assert tracer_provider is not None
    for _ in range(3):
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
        tracer_provider.force_flush(5000)
    failures = [r for r in caplog.records
                if r.name == "proxy.telemetry" and r.levelno == logging.WARNING]
    assert len(failures) == 1
    assert "traces export" in failures[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]


def test_environment_wins_over_the_file(receiver: Receiver, start_sidecar: StartSidecar,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout-sidecar")
    dead = f"http://127.0.0.1:{_closed_port()}"
    sidecar = start_sidecar(_tracing(dead, 'service_name = "from-file"\n'))
    sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: len(receiver.spans()) >= 2)
    resource = {a.key: a.value.string_value
                for a in receiver.traces[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "checkout-sidecar"
