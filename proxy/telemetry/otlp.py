"""OTLP protobuf for the sidecar's own spans, written directly, and the SDK's OTLP exporters
sending it.

The SDK's encoder builds a protobuf object per span, attribute and value and hashes the resource
per span: ~90 us a span, more than the request it describes. Here a span is a few byte strings
joined; the resource and scope are encoded once, by the SDK itself, and every attribute whose
value repeats (operation, model, provider, route, status...) is encoded once and reused. The
bytes are the ones the SDK would send. Spans the policies start through `ctx.tracer` (with events,
links, their own scope) are left to the SDK's encoder and sent in the same request.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any, Protocol

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from proxy.telemetry.recorder import OK, SpanRecord, readable

log = logging.getLogger("proxy.telemetry")

_BYTE = [bytes((i,)) for i in range(128)]
_DOUBLE = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack
_TIMES = struct.Struct("<BQBQ").pack  # start and end time, each with its tag
_IDS = struct.Struct(">BBQQBBQ").pack  # trace id (two halves) and span id, with tags
_PARENT = struct.Struct(">BBQ").pack
_INT64 = range(-(1 << 63), 1 << 63)
_UINT64 = (1 << 64) - 1
# Span.kind: the API's SpanKind values are one below the protobuf enum's.
_KINDS = {kind: b"\x30" + _BYTE[kind.value + 1] for kind in SpanKind}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_FLAGS_LOCAL = b"\x85\x01" + _FIXED32(_HAS_IS_REMOTE)
_FLAGS_REMOTE = b"\x85\x01" + _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE)
_CACHE_LIMIT = 4096
_UNSET = b"\x7a\x00"  # an empty Status: code UNSET, no message


def varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: tag, length, body."""
    return tag + varint(len(body)) + body


def any_value(value: Any) -> bytes:
    """The body of an `AnyValue`, as the SDK's encoder makes it (None is an empty one)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"{value} does not fit an int64")
        return b"\x18" + varint(value & _UINT64)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", key_value(str(k), v))
                                        for k, v in value.items()))
    raise ValueError(f"Invalid type {type(value)} of value {value}")


def key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", any_value(value))


class SpanEncoder:
    """Encodes batches of spans as one `ExportTraceServiceRequest`. Used by one export thread
    at a time (the batcher's, under its export lock), so its caches need no lock."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self.resource = resource
        self.scope = scope
        self._names: dict[str, tuple[SpanKind, bytes]] = {}
        self._keys: dict[str, bytes] = {}
        # The `common` attributes of a span by (*keys, *values): each key has values of one
        # type only (see SpanRecord), so equal values mean equal encodings.
        self._blocks: dict[tuple[Any, ...], bytes] = {}
        # The SDK encodes the envelope: resource, scope and their schema URLs.
        probe = ReadableSpan("probe", SpanContext(1, 1, False, TraceFlags(1)), resource=resource,
                             instrumentation_scope=scope)
        envelope = encode_spans([probe]).resource_spans[0]
        scope_spans = envelope.scope_spans[0]
        self._resource_head = _field(b"\x0a", envelope.resource.SerializeToString())
        self._resource_tail = _string(b"\x1a", envelope.schema_url)
        self._scope_head = _field(b"\x0a", scope_spans.scope.SerializeToString())
        self._scope_tail = _string(b"\x1a", scope_spans.schema_url)

    def encode(self, spans: Sequence[SpanRecord | ReadableSpan]) -> bytes:
        ours: list[bytes] = []
        theirs: list[ReadableSpan] = []
        for span in spans:
            if type(span) is SpanRecord:
                ours.append(self.span(span))
            else:
                theirs.append(span)  # type: ignore[arg-type]  # a ReadableSpan, then
        out = b""
        if ours:
            body = b"".join([self._scope_head, *ours, self._scope_tail])
            out = _field(b"\x0a", b"".join(
                [self._resource_head, _field(b"\x12", body), self._resource_tail]))
        if theirs:
            out += encode_spans(theirs).SerializePartialToString()
        return out

    def request(self, spans: Sequence[SpanRecord | ReadableSpan]) -> ExportTraceServiceRequest:
        """The same as a protobuf object, for the gRPC exporter."""
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
            self.encode(spans))
        return request

    def readable(self, spans: Sequence[SpanRecord | ReadableSpan]) -> list[ReadableSpan]:
        return readable(spans, self.resource, self.scope)

    def span(self, span: SpanRecord) -> bytes:
        """One `Span` as a field of `ScopeSpans`. Written for few calls: on the export thread
        every call costs, and every request has two spans or more."""
        trace_ids = span.trace
        trace_id = trace_ids[0]
        parts = [_IDS(0x0a, 0x10, trace_id >> 64, trace_id & _UINT64, 0x12, 0x08, span.span_id)]
        if trace_ids[2]:
            parts.append(_string(b"\x1a", ",".join(
                f"{k}={v}" for k, v in trace_ids[2].items())))
        if span.parent_id is not None:
            parts.append(_PARENT(0x22, 0x08, span.parent_id))
        head = self._names.get(span.name)
        if head is None or head[0] is not span.kind:
            head = self._name(span)
        parts += (head[1], _TIMES(0x39, span.start, 0x41, span.end))
        common = span.common
        if common:
            block = (*common, *common.values())
            try:
                encoded = self._blocks.get(block)
            except TypeError:  # an unhashable value after all: encoded on its own
                encoded = None
            parts.append(self._block(block, common) if encoded is None else encoded)
        if span.own:
            self._add_own(span.own, parts)
        status = span.status
        if status is OK:
            parts.append(_UNSET)
        else:
            code = status.status_code.value
            parts.append(_field(b"\x7a", _string(b"\x12", status.description or "")
                                + (b"\x18" + _BYTE[code] if code else b"")))
        parts.append(_FLAGS_LOCAL if span.remote_parent is None else _FLAGS_REMOTE)
        body = b"".join(parts)
        size = len(body)
        return b"\x12" + (_BYTE[size] if size < 0x80 else varint(size)) + body

    def _name(self, span: SpanRecord) -> tuple[SpanKind, bytes]:
        if len(self._names) >= _CACHE_LIMIT:
            self._names.clear()
        head = self._names[span.name] = (span.kind,
                                         _string(b"\x2a", span.name) + _KINDS[span.kind])
        return head

    def _block(self, block: tuple[Any, ...], common: Mapping[str, Any]) -> bytes:
        """The encoding of a span's `common` attributes, remembered as one."""
        encoded = b"".join([self._attribute(key, value) for key, value in common.items()])
        if len(self._blocks) >= _CACHE_LIMIT:
            self._blocks.clear()
        with suppress(TypeError):  # an unhashable value: not remembered
            self._blocks[block] = encoded
        return encoded

    def _add_own(self, own: Mapping[str, Any], out: list[bytes]) -> None:
        """Appends the attributes in `own`: values that seldom repeat, so encoded each time,
        short strings and small ints without a call per piece."""
        keys = self._keys
        for key, value in own.items():
            keyed = keys.get(key)
            if keyed is None:
                keyed = self._key(key)
            kind = type(value)
            if kind is str:
                raw = value.encode()
                size = len(raw)
                if len(keyed) + size < 0x7c:  # every length fits one byte
                    out += (b"\x4a", _BYTE[len(keyed) + size + 4], keyed, b"\x12",
                            _BYTE[size + 2], b"\x0a", _BYTE[size], raw)
                    continue
            elif kind is int and 0 <= value < 0x80 and len(keyed) < 0x7c:
                out += (b"\x4a", _BYTE[len(keyed) + 4], keyed, b"\x12\x02\x18", _BYTE[value])
                continue
            out.append(self._attribute(key, value))

    def _key(self, key: str) -> bytes:
        """A key's encoding: KeyValue.key, tag and length included, behind an attribute tag."""
        if len(self._keys) >= _CACHE_LIMIT:
            self._keys.clear()
        keyed = self._keys[key] = _field(b"\x0a", key.encode())
        return keyed

    @staticmethod
    def _attribute(key: str, value: Any) -> bytes:
        try:
            return _field(b"\x4a", key_value(key, value))
        except ValueError:
            # As the SDK does: an attribute that cannot be encoded is left out.
            log.debug("span attribute %s=%r cannot be encoded", key, value)
            return b""


def _string(tag: bytes, text: str) -> bytes:
    """A string field, omitted when empty (proto3)."""
    return _field(tag, text.encode()) if text else b""


class RecordExporter(Protocol):
    """An exporter of `SpanRecord`s as well as the SDK's spans."""

    def export(self, spans: Sequence[SpanRecord | ReadableSpan]) -> SpanExportResult: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...

    def shutdown(self) -> None: ...


def http_exporter(encoder: SpanEncoder, **args: Any) -> RecordExporter:
    """The SDK's OTLP/HTTP span exporter (endpoint, headers, TLS, compression, retries), sending
    our bytes. On an SDK whose exporter is built differently it stays entirely the SDK's."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    sdk_log = logging.getLogger(HTTPSpanExporter.__module__)  # quieted by ExportLog, like the SDK's

    class HTTPSpans(HTTPSpanExporter):
        def export(self, spans: Sequence[SpanRecord | ReadableSpan]) -> SpanExportResult:
            client = getattr(self, "_client", None)
            if client is None or getattr(self, "_shutdown", True) or not hasattr(client, "export"):
                return super().export(encoder.readable(spans))
            try:
                data = encoder.encode(spans)
            except Exception as error:
                sdk_log.error("Failed to encode span batch: %s", error)
                return SpanExportResult.FAILURE
            limit = getattr(self, "_max_request_size", 0)
            if limit > 0 and len(data) > limit:
                sdk_log.warning("Dropping span batch: serialized size %d bytes exceeds "
                                "max_request_size %d bytes.", len(data), limit)
                return SpanExportResult.FAILURE
            ok = client.export(data).success
            return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    return HTTPSpans(**args)


def grpc_exporter(encoder: SpanEncoder, **args: Any) -> RecordExporter:
    """The SDK's OTLP/gRPC span exporter, its request built from our bytes."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class GRPCSpans(OTLPSpanExporter):
        def export(self, spans: Sequence[SpanRecord | ReadableSpan]) -> SpanExportResult:
            return super().export(spans)  # type: ignore[arg-type]  # _translate_data reads them

        def _translate_data(self, data: Sequence[SpanRecord | ReadableSpan],
                            ) -> ExportTraceServiceRequest:
            return encoder.request(data)

    return GRPCSpans(**args)
