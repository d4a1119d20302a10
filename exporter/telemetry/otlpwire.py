"""OTLP span export without protobuf message objects (DESIGN §4 "Export", §7).

The SDK's OTLP exporters turn every ``ReadableSpan`` into ``opentelemetry-proto`` message
objects (``encode_spans``: one ``Span``, ``KeyValue`` and ``AnyValue`` object per field)
and then serialise them; that costs several times more CPU than building the span.
:class:`WireEncoder` writes the ``ExportTraceServiceRequest`` wire bytes directly from
the ``ReadableSpan``\\ s:

* resource and instrumentation scope are encoded once per (resource, scope) and reused
  across batches (they are the same objects for every span of a sink);
* attribute keys are encoded once; a span attribute whose value is a ``str``, ``bool``,
  ``int`` or a sequence of ``str`` is looked up in a bounded cache of finished
  ``KeyValue`` fields, so the low-cardinality attributes (type, rcode, flags, node, pod,
  nameserver, ...) cost a dict lookup;
* lengths are computed, not re-serialised: a batch is ``b"".join`` of its pieces once.

The output is the same message the SDK would send (same fields, same grouping by resource
and scope, same treatment of ``None`` values, out-of-range ints and unencodable
attributes, which the SDK logs and leaves out); the tests compare it, decoded with
``opentelemetry-proto``, with ``encode_spans`` on random spans.

:class:`FastGrpcSpanExporter` and :class:`FastHttpSpanExporter` are the SDK's
``OTLPSpanExporter`` s (so endpoint, headers, TLS, compression, timeout and retries still
come from ``OTEL_EXPORTER_OTLP_*`` and the keyword arguments) with only the encoding
replaced: gRPC sends the bytes through a stub whose request serialiser is the identity;
HTTP posts them as the body. Should the encoder ever fail on a batch, the SDK's encoder is
used for that batch (logged once).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as _SdkGrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as _SdkHttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import SpanContext
from opentelemetry.trace.status import Status

log = logging.getLogger(__name__)

_pack_q: Final = struct.Struct("<Q").pack
_pack_d: Final = struct.Struct("<d").pack
_pack_fixed_times: Final = struct.Struct("<BQBQ").pack

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_U64: Final = 1 << 64


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of ``0 <= n < 2**64`` (negative int64: pass ``n + 2**64``)."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: varints of 0 .. 2**14-1 (every length of an attribute, event, link or ordinary span)
_VB: Final = tuple(varint(i) for i in range(1 << 14))
_VB_N: Final = 1 << 14


def _len(n: int) -> bytes:
    return _VB[n] if n < _VB_N else varint(n)


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: tag, length, body."""
    n = len(body)
    return tag + (_VB[n] if n < _VB_N else varint(n)) + body


# Wire tags (field number << 3 | wire type) of the messages written here.
# ExportTraceServiceRequest / ResourceSpans / ScopeSpans / Resource / InstrumentationScope
_T_RESOURCE_SPANS: Final = b"\x0a"  # request.resource_spans = 1
_T_RS_RESOURCE: Final = b"\x0a"  # ResourceSpans.resource = 1
_T_RS_SCOPE_SPANS: Final = b"\x12"  # ResourceSpans.scope_spans = 2
_T_RS_SCHEMA_URL: Final = b"\x1a"  # ResourceSpans.schema_url = 3
_T_SS_SCOPE: Final = b"\x0a"  # ScopeSpans.scope = 1
_T_SS_SPAN: Final = b"\x12"  # ScopeSpans.spans = 2
_T_SS_SCHEMA_URL: Final = b"\x1a"  # ScopeSpans.schema_url = 3
_T_RES_ATTR: Final = b"\x0a"  # Resource.attributes = 1
_T_SCOPE_NAME: Final = b"\x0a"  # InstrumentationScope.name = 1
_T_SCOPE_VERSION: Final = b"\x12"  # .version = 2
_T_SCOPE_ATTR: Final = b"\x1a"  # .attributes = 3
# Span
_T_TRACE_ID: Final = b"\x0a\x10"  # trace_id = 1, always 16 bytes
_T_SPAN_ID: Final = b"\x12\x08"  # span_id = 2, always 8 bytes
_T_TRACE_STATE: Final = b"\x1a"  # trace_state = 3
_T_PARENT_ID: Final = b"\x22\x08"  # parent_span_id = 4
_T_NAME: Final = b"\x2a"  # name = 5
_T_SPAN_ATTR: Final = b"\x4a"  # attributes = 9
_T_DROPPED_ATTRS: Final = b"\x50"  # dropped_attributes_count = 10
_T_EVENT: Final = b"\x5a"  # events = 11
_T_DROPPED_EVENTS: Final = b"\x60"  # dropped_events_count = 12
_T_LINK: Final = b"\x6a"  # links = 13
_T_DROPPED_LINKS: Final = b"\x70"  # dropped_links_count = 14
_T_STATUS: Final = b"\x7a"  # status = 15
_START_TAG: Final = 0x39  # start_time_unix_nano = 7, fixed64
_END_TAG: Final = 0x41  # end_time_unix_nano = 8, fixed64
# Span.flags = 16 (fixed32): HAS_IS_REMOTE (0x100), | IS_REMOTE (0x200) when the parent is remote
_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", 0x300)
# Span.Event
_T_EV_TIME: Final = b"\x09"  # time_unix_nano = 1, fixed64
_T_EV_NAME: Final = b"\x12"  # name = 2
_T_EV_ATTR: Final = b"\x1a"  # attributes = 3
_T_EV_DROPPED: Final = b"\x20"  # dropped_attributes_count = 4
# Span.Link
_T_LK_TRACE_ID: Final = b"\x0a\x10"
_T_LK_SPAN_ID: Final = b"\x12\x08"
_T_LK_ATTR: Final = b"\x22"  # attributes = 4
_T_LK_DROPPED: Final = b"\x28"  # dropped_attributes_count = 5
_LK_FLAGS_LOCAL: Final = b"\x35" + struct.pack("<I", 0x100)  # flags = 6, fixed32
_LK_FLAGS_REMOTE: Final = b"\x35" + struct.pack("<I", 0x300)
# Status
_T_ST_MESSAGE: Final = b"\x12"  # message = 2
_T_ST_CODE: Final = b"\x18"  # code = 3
# KeyValue / AnyValue / ArrayValue / KeyValueList
_T_KV_KEY: Final = b"\x0a"
_T_KV_VALUE: Final = b"\x12"
_T_AV_STRING: Final = b"\x0a"
_T_AV_BOOL: Final = b"\x10"
_T_AV_INT: Final = b"\x18"
_T_AV_DOUBLE: Final = b"\x21"
_T_AV_ARRAY: Final = b"\x2a"
_T_AV_KVLIST: Final = b"\x32"
_T_AV_BYTES: Final = b"\x3a"
_T_LIST_VALUE: Final = b"\x0a"  # ArrayValue.values = 1, KeyValueList.values = 1

_AV_FALSE: Final = b"\x10\x00"
_AV_TRUE: Final = b"\x10\x01"

#: Span.kind = 6 by id() of the SpanKind member (an Enum hashes in Python, slowly)
_KIND: Final[dict[int, bytes]] = {
    id(SpanKind.INTERNAL): b"\x30\x01",
    id(SpanKind.SERVER): b"\x30\x02",
    id(SpanKind.CLIENT): b"\x30\x03",
    id(SpanKind.PRODUCER): b"\x30\x04",
    id(SpanKind.CONSUMER): b"\x30\x05",
}
_PLAIN_SEQ: Final = (tuple, list)


def _private_fields_ok() -> bool:
    """Whether ``ReadableSpan`` still keeps its fields where :meth:`WireEncoder.encode_span` reads
    them directly (checked once; otherwise the public properties are used)."""
    probe = ReadableSpan(name="probe", context=SpanContext(1, 1, is_remote=False))
    names = ("_context", "_parent", "_name", "_kind", "_start_time", "_end_time", "_attributes")
    return all(hasattr(probe, a) for a in (*names, "_events", "_links", "_status"))


_PRIVATE_OK: Final = _private_fields_ok()


class UnencodableValue(TypeError):
    pass


def encode_any_value(value: object) -> bytes:
    """The ``AnyValue`` message body of an attribute value, as the SDK's ``_encode_value`` maps it.

    Raises (like the SDK) for ints outside int64, unencodable strings and unknown types.
    """
    if value is None:
        return b""
    if isinstance(value, bool):
        return _AV_TRUE if value else _AV_FALSE
    if isinstance(value, str):
        return _field(_T_AV_STRING, value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"int {value} is out of the int64 range")
        return _T_AV_INT + varint(value if value >= 0 else value + _U64)
    if isinstance(value, float):
        return _T_AV_DOUBLE + _pack_d(value)
    if isinstance(value, bytes):
        return _field(_T_AV_BYTES, value)
    if isinstance(value, Sequence):
        return _field(_T_AV_ARRAY, b"".join([_field(_T_LIST_VALUE, encode_any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        kvs = [_field(_T_LIST_VALUE, encode_key_value(str(k), v)) for k, v in value.items()]
        return _field(_T_AV_KVLIST, b"".join(kvs))
    raise UnencodableValue(f"Invalid type {type(value)} of value {value}")


def encode_key_value(key: str, value: object) -> bytes:
    """A ``KeyValue`` message body (proto3: an empty key is not written)."""
    return (_field(_T_KV_KEY, key.encode()) if key else b"") + _field(_T_KV_VALUE, encode_any_value(value))


def encode_attributes(tag: bytes, attributes: Mapping[str, object] | None) -> list[bytes]:
    """Repeated ``KeyValue`` fields with ``tag``; an attribute that cannot be encoded is logged and
    left out, as the SDK does."""
    out: list[bytes] = []
    if not attributes:
        return out
    for key, value in attributes.items():
        try:
            out.append(_field(tag, encode_key_value(key, value)))
        except Exception as error:
            log.exception("Failed to encode key %s: %s", key, error)
    return out


def encode_resource(resource: Resource) -> bytes:
    """A ``Resource`` message body (the SDK sets only its attributes)."""
    return b"".join(encode_attributes(_T_RES_ATTR, resource.attributes))


def encode_scope(scope: InstrumentationScope | None) -> bytes:
    """An ``InstrumentationScope`` message body (empty for no scope, as the SDK sends it)."""
    if scope is None:
        return b""
    parts = []
    if scope.name:
        parts.append(_field(_T_SCOPE_NAME, scope.name.encode()))
    if scope.version:
        parts.append(_field(_T_SCOPE_VERSION, scope.version.encode()))
    parts.extend(encode_attributes(_T_SCOPE_ATTR, scope.attributes))
    return b"".join(parts)


def encode_event(event: Event) -> bytes:
    """A ``Span.Event`` message body."""
    body = []
    if event.timestamp:
        body.append(_T_EV_TIME + _pack_q(event.timestamp))
    if event.name:
        body.append(_field(_T_EV_NAME, event.name.encode()))
    body.extend(encode_attributes(_T_EV_ATTR, event.attributes))
    if event.dropped_attributes:
        body.append(_T_EV_DROPPED + varint(event.dropped_attributes))
    return b"".join(body)


def encode_link(link: Link) -> bytes:
    """A ``Span.Link`` message body (the SDK leaves the link's trace state out)."""
    ctx = link.context
    body = [_T_LK_TRACE_ID, ctx.trace_id.to_bytes(16, "big"), _T_LK_SPAN_ID, ctx.span_id.to_bytes(8, "big")]
    body.extend(encode_attributes(_T_LK_ATTR, link.attributes))
    if link.dropped_attributes:
        body.append(_T_LK_DROPPED + varint(link.dropped_attributes))
    body.append(_LK_FLAGS_REMOTE if ctx.is_remote else _LK_FLAGS_LOCAL)
    return b"".join(body)


_NOTHING: Final = object()
#: the cache of a key not worth caching: always empty
_NEVER: Final[dict[object, bytes]] = {}
#: a key whose cache fills this many times is not cached any more
_MAX_OVERFLOWS: Final = 4


class WireEncoder:
    """Encodes batches of ``ReadableSpan`` to ``ExportTraceServiceRequest`` bytes.

    Its caches are unlocked dicts that only ever hold correct (key, value) -> bytes entries, so
    concurrent ``encode`` calls at worst lose cache entries. Memory is
    bounded: encoded attributes are cached per key, for at most ``max_keys`` keys and
    ``max_values`` values per key; a key's cache that fills up is emptied, and a key whose
    cache fills up ``_MAX_OVERFLOWS`` times (a high-cardinality attribute such as a port or
    DNS id) is no longer cached.
    """

    def __init__(self, max_keys: int = 512, max_values: int = 1024) -> None:
        self._max_keys = max_keys
        self._max_values = max_values
        self._keys: dict[str, bytes] = {}  # key -> KeyValue.key field
        # key -> value (or (type, value)) -> the span attribute field; _NEVER for keys whose values
        # do not repeat enough
        self._kc: dict[str, dict[object, bytes]] = {}
        self._overflows: dict[str, int] = {}
        self._status: dict[tuple[int, str | None], bytes] = {}
        # id(resource or scope) -> (the object, its encoded message); kept while the object lives
        self._res: dict[int, tuple[Resource, bytes]] = {}
        self._scope: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    # --- attribute fields ------------------------------------------------------------------
    def _key(self, key: str) -> bytes:
        kb = self._keys.get(key)
        if kb is None:
            kb = _field(_T_KV_KEY, key.encode()) if key else b""
            if len(self._keys) >= self._max_keys:
                self._keys.clear()
            self._keys[key] = kb
        return kb

    def attribute_field(self, key: str, value: object) -> bytes | None:
        """One span attribute field (``Span.attributes``), or None (logged) where the SDK
        leaves the attribute out."""
        try:
            kb = self._keys.get(key)
            if kb is None:
                kb = self._key(key)
            t = type(value)
            if t is str:
                vb: bytes = value.encode()  # type: ignore[attr-defined]
                n = len(vb)
                av = b"\x0a" + (_VB[n] if n < _VB_N else varint(n)) + vb
            elif t is int:
                v: int = value  # type: ignore[assignment]
                if v >= 0:
                    if v > _INT64_MAX:
                        raise ValueError(f"int {v} is out of the int64 range")
                    av = _T_AV_INT + (_VB[v] if v < _VB_N else varint(v))
                else:
                    if v < _INT64_MIN:
                        raise ValueError(f"int {v} is out of the int64 range")
                    av = _T_AV_INT + varint(v + _U64)
            elif t is bool:
                av = _AV_TRUE if value else _AV_FALSE
            else:
                av = encode_any_value(value)
            n = len(av)
            kv = kb + b"\x12" + (_VB[n] if n < _VB_N else varint(n)) + av
            n = len(kv)
            return b"\x4a" + (_VB[n] if n < _VB_N else varint(n)) + kv
        except Exception as error:
            log.exception("Failed to encode key %s: %s", key, error)
            return None

    def _attr_miss(
        self, key: str, value: object, cache: dict[object, bytes] | None, out: list[bytes]
    ) -> None:
        """Encodes an attribute not found in its key's cache, and caches it when that key's values
        repeat: a str, bool, int or sequence of str (lookups cannot confuse those: a str never
        equals a tuple, and the others are keyed with their type)."""
        f = self.attribute_field(key, value)
        if f is None:
            return
        out.append(f)
        if cache is _NEVER:
            return
        t = type(value)
        ck: object
        if t is str:
            ck = value
        elif t is bool or t is int:
            ck = (t, value)
        elif t is list or t is tuple:
            seq: Sequence[object] = value  # type: ignore[assignment]
            for x in seq:
                if type(x) is not str:
                    return
            ck = (tuple, tuple(seq))
        else:
            return
        if cache is None:
            if len(self._kc) >= self._max_keys:
                self._kc.clear()
                self._overflows.clear()
            cache = self._kc[key] = {}
        elif len(cache) >= self._max_values:
            n = self._overflows.get(key, 0) + 1
            self._overflows[key] = n
            if n >= _MAX_OVERFLOWS:  # high cardinality: stop caching this key
                self._kc[key] = _NEVER
                return
            cache.clear()
        cache[ck] = f

    def _span_attrs(self, attrs: Mapping[str, object], out: list[bytes]) -> None:
        kc_get = self._kc.get
        append = out.append
        for k, v in attrs.items():
            c = kc_get(k)
            if c is not None:
                t = type(v)
                if t is str:
                    f = c.get(v)
                elif t is bool or t is int:
                    f = c.get((t, v))
                elif t is list or t is tuple:
                    try:
                        f = c.get((tuple, tuple(v)))  # type: ignore[arg-type]
                    except TypeError:  # unhashable items
                        f = None
                else:
                    f = None
                if f is not None:
                    append(f)
                    continue
            self._attr_miss(k, v, c, out)

    # --- messages -------------------------------------------------------------------------
    def _status_field(self, status: Status) -> bytes:
        code = status.status_code
        message = status.description
        ck = (id(code), message)
        f = self._status.get(ck)
        if f is None:
            body = b""
            if message:
                body += _field(_T_ST_MESSAGE, message.encode())
            if code.value:
                body += _T_ST_CODE + varint(code.value)
            f = _field(_T_STATUS, body)
            if len(self._status) >= 256:
                self._status.clear()
            self._status[ck] = f
        return f

    def encode_span(self, span: ReadableSpan) -> bytes:
        """One ``Span`` message body."""
        if type(span) is ReadableSpan and _PRIVATE_OK:
            # the fields behind the properties (which copy, wrap and isinstance-check)
            ctx = span._context
            parent = span._parent
            name = span._name
            kind = span._kind
            start, end = span._start_time, span._end_time
            attrs = span._attributes
            events = span._events
            links = span._links
            status = span._status
            dropped_attrs = 0 if type(attrs) is dict or not attrs else span.dropped_attributes
            dropped_events = 0 if type(events) in _PLAIN_SEQ else span.dropped_events
            dropped_links = 0 if type(links) in _PLAIN_SEQ else span.dropped_links
        else:
            ctx = span.get_span_context()
            parent = span.parent
            name = span.name
            kind = span.kind
            start, end = span.start_time, span.end_time
            attrs = span.attributes
            events = span.events
            links = span.links
            status = span.status
            dropped_attrs = span.dropped_attributes
            dropped_events = span.dropped_events
            dropped_links = span.dropped_links
        assert ctx is not None, "a ReadableSpan without a SpanContext cannot be exported"
        out = [
            _T_TRACE_ID,
            ctx.trace_id.to_bytes(16, "big"),
            _T_SPAN_ID,
            ctx.span_id.to_bytes(8, "big"),
        ]
        ts = ctx.trace_state
        if ts:
            out.append(_field(_T_TRACE_STATE, ",".join([f"{k}={v}" for k, v in ts.items()]).encode()))
        if parent:
            out.append(_T_PARENT_ID)
            out.append(parent.span_id.to_bytes(8, "big"))
        if name:
            out.append(_field(_T_NAME, name.encode()))
        out.append(_KIND[id(kind)])
        if start and end:
            out.append(_pack_fixed_times(_START_TAG, start, _END_TAG, end))
        else:
            if start:
                out.append(bytes((_START_TAG,)) + _pack_q(start))
            if end:
                out.append(bytes((_END_TAG,)) + _pack_q(end))
        if attrs:
            self._span_attrs(attrs, out)
        if dropped_attrs:
            out.append(_T_DROPPED_ATTRS + varint(dropped_attrs))
        if events:
            for ev in events:
                out.append(_field(_T_EVENT, encode_event(ev)))
        if dropped_events:
            out.append(_T_DROPPED_EVENTS + varint(dropped_events))
        if links:
            for link in links:
                out.append(_field(_T_LINK, encode_link(link)))
        if dropped_links:
            out.append(_T_DROPPED_LINKS + varint(dropped_links))
        if status is not None:
            out.append(self._status_field(status))
        out.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(out)

    def _resource_bytes(self, resource: Resource) -> bytes:
        hit = self._res.get(id(resource))
        if hit is not None and hit[0] is resource:
            return hit[1]
        enc = encode_resource(resource)
        if len(self._res) >= 64:
            self._res.clear()
        self._res[id(resource)] = (resource, enc)
        return enc

    def _scope_bytes(self, scope: InstrumentationScope | None) -> bytes:
        hit = self._scope.get(id(scope))
        if hit is not None and hit[0] is scope:
            return hit[1]
        enc = encode_scope(scope)
        if len(self._scope) >= 64:
            self._scope.clear()
        self._scope[id(scope)] = (scope, enc)
        return enc

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The serialised ``ExportTraceServiceRequest`` of ``spans``.

        Spans are grouped by resource, then by instrumentation scope, in order of first
        appearance, like the SDK's ``encode_spans`` (equal resources or scopes that are
        distinct objects share a group).
        """
        # resource group index -> scope group index -> [span field pieces], total length
        resources: list[Resource] = []
        groups: list[tuple[list[InstrumentationScope | None], list[tuple[list[bytes], list[int]]]]] = []
        last_res: object = _NOTHING
        last_scope: object = _NOTHING
        pieces: list[bytes] = []
        size = [0]
        encode_span = self.encode_span
        for span in spans:
            res = span.resource
            scope = span.instrumentation_scope or None
            if res is not last_res or scope is not last_scope:
                pieces, size = self._group(resources, groups, res, scope)
                last_res, last_scope = res, scope
            body = encode_span(span)
            n = len(body)
            head = _T_SS_SPAN + (_VB[n] if n < _VB_N else varint(n))
            pieces.append(head)
            pieces.append(body)
            size[0] += len(head) + n
        out: list[bytes] = []
        for res, (scopes, scope_spans) in zip(resources, groups, strict=True):
            rs_parts: list[bytes] = [_field(_T_RS_RESOURCE, self._resource_bytes(res))]
            rs_size = len(rs_parts[0])
            for scope, (span_pieces, span_size) in zip(scopes, scope_spans, strict=True):
                scope_field = _field(_T_SS_SCOPE, self._scope_bytes(scope))
                tail = b""
                if scope is not None and scope.schema_url:
                    tail = _field(_T_SS_SCHEMA_URL, scope.schema_url.encode())
                ss_len = len(scope_field) + span_size[0] + len(tail)
                ss_head = _T_RS_SCOPE_SPANS + _len(ss_len)
                rs_parts.append(ss_head)
                rs_parts.append(scope_field)
                rs_parts.extend(span_pieces)
                rs_parts.append(tail)
                rs_size += len(ss_head) + ss_len
            if res.schema_url:
                url = _field(_T_RS_SCHEMA_URL, res.schema_url.encode())
                rs_parts.append(url)
                rs_size += len(url)
            out.append(_T_RESOURCE_SPANS + _len(rs_size))
            out.extend(rs_parts)
        return b"".join(out)

    @staticmethod
    def _group(
        resources: list[Resource],
        groups: list[tuple[list[InstrumentationScope | None], list[tuple[list[bytes], list[int]]]]],
        res: Resource,
        scope: InstrumentationScope | None,
    ) -> tuple[list[bytes], list[int]]:
        for i, r in enumerate(resources):
            if r is res or r == res:
                scopes, scope_spans = groups[i]
                break
        else:
            resources.append(res)
            scopes, scope_spans = [], []
            groups.append((scopes, scope_spans))
        for j, s in enumerate(scopes):
            if s is scope or (s is not None and scope is not None and s == scope):
                return scope_spans[j]
        scopes.append(scope)
        entry: tuple[list[bytes], list[int]] = ([], [0])
        scope_spans.append(entry)
        return entry


class _Fallback:
    """Encodes with :class:`WireEncoder`; on an unexpected error, with the SDK (logged once)."""

    def __init__(self) -> None:
        self.encoder = WireEncoder()
        self._warned = False

    def __call__(self, spans: Sequence[ReadableSpan]) -> bytes:
        try:
            return self.encoder.encode(spans)
        except Exception:
            if not self._warned:
                self._warned = True
                log.warning("OTLP wire encoder failed; using the SDK encoder for this batch", exc_info=True)
            return bytes(encode_spans(spans).SerializePartialToString())


_TRACE_EXPORT_METHOD: Final = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _RawTraceServiceStub:
    """``TraceServiceStub`` whose ``Export`` takes the serialised request (bytes) as is."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(
            _TRACE_EXPORT_METHOD,
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


class _EncodedBatch(list[ReadableSpan]):
    """The spans of one export call and, once encoded, their request bytes (encoded once even
    when the SDK retries)."""

    payload: bytes | None = None


class FastGrpcSpanExporter(_SdkGrpcSpanExporter):
    """The SDK's gRPC ``OTLPSpanExporter`` (same arguments and environment) sending requests
    encoded by :class:`WireEncoder`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._encode = _Fallback()
        super().__init__(*args, **kwargs)

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        self._client = _RawTraceServiceStub(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        if isinstance(data, _EncodedBatch):
            if data.payload is None:
                data.payload = self._encode(data)
            payload = data.payload
        else:
            payload = self._encode(data)
        # the raw stub sends bytes unchanged
        return cast(ExportTraceServiceRequest, payload)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._export(_EncodedBatch(spans))


class FastHttpSpanExporter(_SdkHttpSpanExporter):
    """The SDK's HTTP/protobuf ``OTLPSpanExporter`` (same arguments and environment) posting
    bodies encoded by :class:`WireEncoder`. ``export`` follows the SDK's own step for step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._encode = _Fallback()
        super().__init__(*args, **kwargs)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                serialized_data = self._encode(spans)
            except Exception as error:
                log.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(serialized_data, self._max_request_size):
                log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(serialized_data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(serialized_data)} bytes exceeds "
                    f"max_request_size {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            export_result = self._client.export(serialized_data)
            if not export_result.success:
                result.error = export_result.error
                result.error_attrs = (
                    {"http.response.status_code": export_result.status_code}
                    if export_result.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
