"""Derived trace and span ids: one trace per resolution, with no coordination (DESIGN §5).

Every node that sees an exchange computes its ids from what both ends of the exchange
see identically on the wire::

    key      = client address | client port | DNS id | question name | qtype | qclass | transport
    trace_id = BLAKE2b-128(key, person="dnsotel.trace")                 (16 bytes, big-endian int)
    client   = BLAKE2b-64(key, person="dnsotel.span", salt="client")   (8 bytes)
    server   = BLAKE2b-64(key, person="dnsotel.span", salt="server")   (8 bytes)

The client's span (in the pod's netns) and the server's span (in CoreDNS' netns, maybe
on another node) therefore share ``trace_id``, and the server span names the client's
span id as its (remote) parent. The server address is deliberately *not* in the key:
Service NAT rewrites it between the two ends. SNAT of the client (e.g. masquerade on a
hostNetwork path) changes what the server sees as the client, and the two spans then
land in different traces; nothing else breaks.

BLAKE2b is keyed by the ``person`` string only to separate the id spaces; it is used as
a fast, well-mixed hash, not for secrecy. An all-zero result (invalid in W3C trace
context) is mapped to 1.

Only the two ends of one exchange are derived this way. A resolver's upstream query is
not a child by derivation (its key is the resolver's address and port): the resolution
tracker (:mod:`exporter.telemetry.resolution`) puts it in the trace of the server query it
serves, under that server span's derived id, while keeping its own derived span id, so the
upstream's server span (derived from the upstream query's key) still names it as parent.

**Collisions.** Two exchanges with the same key get the same ids. The key repeats when
one socket asks the same question again with the same DNS id — e.g. a client that
keeps one TCP connection or UDP port and a fixed id, or 16-bit id reuse on a long-lived
socket. The backend then shows both exchanges as spans with the *same span id* in one
trace (Tempo renders them as duplicates of one span at two times; the span start times
and ``dns.id`` tell them apart). Random 128-bit collisions between different keys are
negligible (~2^-64 for 2^32 exchanges).
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Final

_TRACE_PERSON: Final = b"dnsotel.trace"
_SPAN_PERSON: Final = b"dnsotel.span"
_CLIENT_SALT: Final = b"client"
_SERVER_SALT: Final = b"server"

ExchangeKey = bytes


def exchange_key(
    client_address: str,
    client_port: int,
    dns_id: int,
    qname: str,
    qtype: int,
    qclass: int,
    transport: int,
) -> ExchangeKey:
    """The bytes both ends of an exchange agree on (see the module docstring)."""
    return f"{client_address}|{client_port}|{dns_id}|{qname}|{qtype}|{qclass}|{transport}".encode()


def trace_id(key: ExchangeKey) -> int:
    """128-bit trace id of the exchange, never 0."""
    return int.from_bytes(blake2b(key, digest_size=16, person=_TRACE_PERSON).digest(), "big") or 1


def client_span_id(key: ExchangeKey) -> int:
    """64-bit span id of the client's span of the exchange, never 0."""
    h = blake2b(key, digest_size=8, person=_SPAN_PERSON, salt=_CLIENT_SALT)
    return int.from_bytes(h.digest(), "big") or 1


def server_span_id(key: ExchangeKey) -> int:
    """64-bit span id of the server's span of the exchange, never 0."""
    h = blake2b(key, digest_size=8, person=_SPAN_PERSON, salt=_SERVER_SALT)
    return int.from_bytes(h.digest(), "big") or 1
