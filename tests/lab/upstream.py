"""A scriptable upstream DNS server for the lab: behaviour is chosen by the question name.

Run it inside the upstream namespace::

    python -m tests.lab.upstream --listen 198.18.100.2 --listen fd00:100::2 --port 53 \
        [--log FILE.jsonl] [--ready-file FILE]

It serves UDP and TCP for the zone ``lab.``. The *zone label* is the label just left of
``lab.``; it picks the behaviour. Labels anywhere in the name can add modifiers.

=====================  ==================================================================
zone label             behaviour
=====================  ==================================================================
``ok``                 NOERROR; A → one address, AAAA → one address, both derived from the
                       whole name by :func:`addresses_for` (``ok.lab.`` itself too)
``many``               NOERROR; A → 40 addresses ``10.40.0.1`` … ``10.40.0.40``, AAAA → 40
                       addresses ``fd00:d5:40::1`` … ``fd00:d5:40::28`` (see :func:`many_addresses`)
``nx``                 NXDOMAIN (the name and everything under it)
``servfail``           SERVFAIL
``refused``            REFUSED
``never``              no response at all (the query is logged)
``tc``                 over UDP: TC=1 and no answers; over TCP: the ``ok`` answer
``cname``              NOERROR; ``NAME CNAME cname-target.ok.lab.`` then the ``ok`` answer
                       for ``cname-target.ok.lab.`` (one CNAME in the chain)
``delay-<N>ms``        the ``ok`` answer after N milliseconds (``delay-<N>`` means the same)
anything else          NXDOMAIN (names under ``lab.``)
=====================  ==================================================================

Modifier labels, anywhere in the name (left of the zone label):

* ``delay-<N>ms`` / ``delay-<N>``: wait N ms before answering, whatever the zone label
  (``x.delay-40ms.nx.lab.`` → NXDOMAIN after 40 ms);
* ``ttl-<N>``: answer records carry TTL N (default :data:`DEFAULT_TTL`).

Names outside ``lab.`` get REFUSED. Types other than A/AAAA on an answering name get
NOERROR with no answers (NODATA). Over UDP, a response larger than the client's EDNS
payload size (512 without EDNS) is sent truncated (TC=1, no records), as a real server
does, so the ``many`` AAAA answer needs EDNS or TCP.

TCP: every complete length-prefixed query that arrives in one read is answered and the
responses are written with ONE write (one segment for a pipelined pair), in query order.

Each received query is logged as a JSON line (``--log``): ts, transport, src, sport, id,
name, type, action. Malformed queries are logged and answered FORMERR when a header can
be read; nothing a client sends can stop the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

ZONE = dns.name.from_text("lab.")
DEFAULT_TTL = 300
MANY_COUNT = 40
CNAME_TARGET = "cname-target.ok.lab."
_DELAY_RE = re.compile(r"^delay-(\d+)(?:ms)?$")
_TTL_RE = re.compile(r"^ttl-(\d+)$")


def addresses_for(name: str) -> tuple[str, str]:
    """The A and AAAA address an ``ok`` name answers with: ``10.x.y.z`` and ``fd00:d5::…``.

    Derived from SHA-256 of the lower-cased name with a trailing dot, so tests compute the
    expected answer without talking to the server.
    """
    fqdn = name.lower() if name.endswith(".") else name.lower() + "."
    h = hashlib.sha256(fqdn.encode()).digest()
    v4 = f"10.{h[0]}.{h[1]}.{1 + h[2] % 254}"
    v6 = str(ipaddress.IPv6Address(b"\xfd\x00\x00\xd5" + b"\x00" * 4 + h[3:11]))
    return v4, v6


def many_addresses(rdtype: str = "A") -> list[str]:
    """The ``many`` answer: 40 addresses in order."""
    if rdtype == "AAAA":
        return [str(ipaddress.IPv6Address(f"fd00:d5:40::{i:x}")) for i in range(1, MANY_COUNT + 1)]
    return [f"10.40.0.{i}" for i in range(1, MANY_COUNT + 1)]


@dataclass(frozen=True, slots=True)
class Plan:
    """What the server does for one question."""

    action: str  # answer | nxdomain | servfail | refused | never | truncate | nodata
    delay_ms: int
    ttl: int


def plan_for(qname: str, transport: str) -> Plan:
    """Decide the behaviour for a question name (see the module docstring)."""
    name = dns.name.from_text(qname.lower() if qname else ".")
    if not name.is_subdomain(ZONE):
        return Plan("refused", 0, DEFAULT_TTL)
    labels = [lbl.decode("ascii", "replace") for lbl in name.relativize(ZONE).labels]
    delay_ms = 0
    ttl = DEFAULT_TTL
    for label in labels:
        m = _DELAY_RE.match(label)
        if m:
            delay_ms = max(delay_ms, int(m.group(1)))
        m = _TTL_RE.match(label)
        if m:
            ttl = int(m.group(1))
    zone_label = labels[-1] if labels else ""
    if zone_label in ("ok", "many", "cname") or _DELAY_RE.match(zone_label):
        action = "answer"
    elif zone_label == "tc":
        action = "truncate" if transport == "udp" else "answer"
    elif zone_label in ("nx", "servfail", "refused", "never"):
        action = {"nx": "nxdomain"}.get(zone_label, zone_label)
    else:
        action = "nxdomain"
    return Plan(action, delay_ms, ttl)


def build_response(query: dns.message.Message, plan: Plan) -> dns.message.Message:
    """The response for a parsed query according to ``plan`` (not for ``never``)."""
    resp = dns.message.make_response(query, recursion_available=True)
    resp.flags |= dns.flags.AA
    if not query.question:
        resp.set_rcode(dns.rcode.FORMERR)
        return resp
    q = query.question[0]
    if plan.action == "nxdomain":
        resp.set_rcode(dns.rcode.NXDOMAIN)
    elif plan.action == "servfail":
        resp.flags &= ~dns.flags.AA
        resp.set_rcode(dns.rcode.SERVFAIL)
    elif plan.action == "refused":
        resp.flags &= ~dns.flags.AA
        resp.set_rcode(dns.rcode.REFUSED)
    elif plan.action == "truncate":
        resp.flags |= dns.flags.TC
    elif plan.action == "answer" and q.rdclass == dns.rdataclass.IN:
        _add_answers(resp, q.name, q.rdtype, plan.ttl)
    return resp


def _add_answers(resp: dns.message.Message, qname: dns.name.Name, rdtype: int, ttl: int) -> None:
    text = qname.to_text().lower()
    zone_label = qname.relativize(ZONE).labels[-1].decode("ascii", "replace") if qname != ZONE else ""
    owner = qname
    if zone_label == "cname":
        target = dns.name.from_text(CNAME_TARGET)
        resp.answer.append(dns.rrset.from_text(owner, ttl, "IN", "CNAME", CNAME_TARGET))
        owner, text = target, CNAME_TARGET
    if rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return
    tname = "A" if rdtype == dns.rdatatype.A else "AAAA"
    if zone_label == "many":
        addrs = many_addresses(tname)
    else:
        v4, v6 = addresses_for(text)
        addrs = [v4 if tname == "A" else v6]
    resp.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", tname, addrs))


def respond_wire(data: bytes, transport: str, log: Logger, peer: tuple[str, int]) -> tuple[bytes | None, int]:
    """Parse one query; return (response wire or None, delay in ms). Never raises."""
    try:
        query = dns.message.from_wire(data)
    except Exception as exc:  # malformed: FORMERR when a header is readable
        log.write(transport, peer, None, "", "", f"malformed:{type(exc).__name__}")
        if len(data) >= 12 and not data[2] & 0x80:
            hdr = bytearray(data[:12])
            hdr[2] = (hdr[2] | 0x80) & 0xF9  # QR=1, clear AA/TC
            hdr[3] = (hdr[3] & 0xF0) | dns.rcode.FORMERR
            hdr[4:12] = b"\x00" * 8
            return bytes(hdr), 0
        return None, 0
    try:
        if query.flags & dns.flags.QR or query.opcode() != dns.opcode.QUERY:
            log.write(transport, peer, query.id, "", "", "ignored")
            return None, 0
        if not query.question:
            log.write(transport, peer, query.id, "", "", "formerr")
            return build_response(query, Plan("formerr", 0, DEFAULT_TTL)).to_wire(), 0
        q = query.question[0]
        qname = q.name.to_text()
        plan = plan_for(qname, transport)
        log.write(
            transport, peer, query.id, qname, dns.rdatatype.to_text(q.rdtype), plan.action, plan.delay_ms
        )
        if plan.action == "never":
            return None, plan.delay_ms
        resp = build_response(query, plan)
        if transport == "udp":
            limit = max(512, query.payload) if query.edns >= 0 else 512
            try:
                return resp.to_wire(max_size=limit), plan.delay_ms
            except dns.exception.TooBig:
                resp.answer.clear()
                resp.authority.clear()
                resp.additional.clear()
                resp.flags |= dns.flags.TC
        return resp.to_wire(max_size=65535), plan.delay_ms
    except Exception as exc:
        log.write(transport, peer, None, "", "", f"error:{type(exc).__name__}:{exc}")
        try:
            fail = dns.message.make_response(query)
            fail.set_rcode(dns.rcode.SERVFAIL)
            return fail.to_wire(), 0
        except Exception:
            return None, 0


class Logger:
    """JSON-lines log of received queries (no-op without a file)."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    def write(
        self,
        transport: str,
        peer: tuple[str, int],
        qid: int | None,
        name: str,
        qtype: str,
        action: str,
        delay_ms: int = 0,
    ) -> None:
        if self._stream is None:
            return
        rec: dict[str, Any] = {
            "ts": time.time(),
            "transport": transport,
            "src": peer[0],
            "sport": peer[1],
            "id": qid,
            "name": name,
            "type": qtype,
            "action": action,
            "delay_ms": delay_ms,
        }
        with contextlib.suppress(Exception):
            self._stream.write(json.dumps(rec, sort_keys=True) + "\n")
            self._stream.flush()


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, log: Logger) -> None:
        self.log = log
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peer = (str(addr[0]), int(addr[1]))
        wire, delay = respond_wire(data, "udp", self.log, peer)
        if wire is None:
            return
        if delay <= 0:
            self._send(wire, addr)
            return
        task = asyncio.get_running_loop().create_task(self._later(wire, addr, delay))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, wire: bytes, addr: Any, delay: int) -> None:
        await asyncio.sleep(delay / 1000)
        self._send(wire, addr)

    def _send(self, wire: bytes, addr: Any) -> None:
        with contextlib.suppress(Exception):
            if self.transport is not None:
                self.transport.sendto(wire, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors etc.: ignore
        pass


async def _answer_later(wire: bytes | None, delay: int) -> bytes | None:
    if delay > 0:
        await asyncio.sleep(delay / 1000)
    return wire


async def handle_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: Logger) -> None:
    peername = writer.get_extra_info("peername") or ("?", 0)
    peer = (str(peername[0]), int(peername[1]))
    buf = b""
    try:
        while True:
            chunk = await reader.read(65537)
            if not chunk:
                break
            buf += chunk
            frames: list[bytes] = []
            while len(buf) >= 2:
                size = int.from_bytes(buf[:2], "big")
                if len(buf) < 2 + size:
                    break
                frames.append(buf[2 : 2 + size])
                buf = buf[2 + size :]
            if not frames:
                continue
            planned = [respond_wire(f, "tcp", log, peer) for f in frames]
            results = await asyncio.gather(*(_answer_later(w, d) for w, d in planned))
            out = b"".join(len(w).to_bytes(2, "big") + w for w in results if w is not None)
            if out:
                writer.write(out)  # one write: pipelined answers leave in one segment
                await writer.drain()
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listen: list[str], port: int, log: Logger, ready_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closers: list[Any] = []
    for addr in listen:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpServer(log), local_addr=(addr, port), family=family
        )
        closers.append(transport)
        server = await asyncio.start_server(
            lambda r, w: handle_tcp(r, w, log), host=addr, port=port, family=family, reuse_address=True
        )
        closers.append(server)
    if ready_file:
        with open(ready_file, "w") as fh:
            fh.write("ready\n")
    await stop.wait()
    for c in closers:
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.upstream", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", action="append", required=True, help="address to serve on (repeatable)")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--log", help="JSON-lines file of received queries")
    ap.add_argument("--ready-file", help="written once every socket is bound")
    args = ap.parse_args(argv)
    stream = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115
    try:
        asyncio.run(serve(args.listen, args.port, Logger(stream), args.ready_file))
    finally:
        if stream is not None:
            stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
