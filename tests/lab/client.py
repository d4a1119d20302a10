"""A DNS client for the lab, printing one JSON line per result.

Run it in a client namespace (``Lab.exec`` does)::

    python -m tests.lab.client --server 198.18.1.1 a.ok.lab. A b.ok.lab. AAAA
    python -m tests.lab.client --server fd00:1::1 --tcp --id 4660 --sport 40001 many.lab.
    python -m tests.lab.client --server 198.18.1.1 --tcp --pipeline a.ok.lab. b.ok.lab.
    python -m tests.lab.client --server 198.18.1.1 --tcp-fallback tc.lab.
    python -m tests.lab.client --system foo AAAA     # getaddrinfo through /etc/resolv.conf

Positional arguments are names, each optionally followed by a type (a token without a
dot that names an RR type). Queries run one after the other (``--pipeline``: all of them
on one TCP connection, written with one ``send``). ``--id N`` gives the first query the
DNS id N and each next one N+1, N+2…; ``--sport P`` binds the source port (UDP: one
socket for all queries; TCP: each connection, with SO_REUSEADDR).

Each result line: name, type, id, transport, server, port, sport, rcode (text, or null
on timeout/error), answers (A/AAAA addresses in order), cnames, ttl (min over the answer
section, or null), num_answers (answer RR count), tc, aa, rd, ra, elapsed_ms, error
(null, "timeout", or the exception text). ``--system`` lines have name, type, addresses,
error (the ``socket.gaierror`` name, e.g. ``EAI_NONAME``) and elapsed_ms.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype


def parse_queries(tokens: list[str]) -> list[tuple[str, str]]:
    """``["a.lab.", "AAAA", "b.lab."]`` → ``[("a.lab.", "AAAA"), ("b.lab.", "A")]``."""
    out: list[tuple[str, str]] = []
    for tok in tokens:
        if out and "." not in tok and _is_type(tok):
            out[-1] = (out[-1][0], tok.upper())
        else:
            out.append((tok, "A"))
    return out


def _is_type(tok: str) -> bool:
    try:
        dns.rdatatype.from_text(tok.upper())
    except Exception:
        return False
    return True


def make_query(name: str, rdtype: str, qid: int | None, edns: bool) -> dns.message.QueryMessage:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232)
    if qid is not None:
        q.id = qid & 0xFFFF
    return q


def describe(
    q: dns.message.Message, resp: dns.message.Message | None, transport: str, server: str, port: int
) -> dict[str, Any]:
    qq = q.question[0]
    row: dict[str, Any] = {
        "name": qq.name.to_text(),
        "type": dns.rdatatype.to_text(qq.rdtype),
        "id": q.id,
        "transport": transport,
        "server": server,
        "port": port,
        "sport": None,
        "rcode": None,
        "answers": [],
        "cnames": [],
        "ttl": None,
        "num_answers": 0,
        "tc": False,
        "aa": False,
        "rd": bool(q.flags & dns.flags.RD),
        "ra": False,
        "elapsed_ms": None,
        "error": None,
    }
    if resp is None:
        return row
    answers: list[str] = []
    cnames: list[str] = []
    ttls: list[int] = []
    count = 0
    for rrset in resp.answer:
        ttls.append(rrset.ttl)
        count += len(rrset)
        for rd in rrset:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                answers.append(rd.to_text())
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cnames.append(rd.to_text())
    row.update(
        rcode=dns.rcode.to_text(resp.rcode()),
        answers=answers,
        cnames=cnames,
        ttl=min(ttls) if ttls else None,
        num_answers=count,
        tc=bool(resp.flags & dns.flags.TC),
        aa=bool(resp.flags & dns.flags.AA),
        rd=bool(resp.flags & dns.flags.RD),
        ra=bool(resp.flags & dns.flags.RA),
        id=resp.id,
    )
    return row


def _family(server: str) -> int:
    return socket.AF_INET6 if ":" in server else socket.AF_INET


def _bind_any(server: str) -> str:
    return "::" if ":" in server else "0.0.0.0"


def udp_query(
    sock: socket.socket, q: dns.message.Message, server: str, port: int, timeout: float
) -> dns.message.Message | None:
    """Send once, wait for a response with the same id from the server (no retry)."""
    sock.sendto(q.to_wire(), (server, port))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        try:
            resp = dns.message.from_wire(data)
        except Exception:
            continue
        if resp.id == q.id and resp.flags & dns.flags.QR:
            return resp


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def tcp_queries(
    qs: list[dns.message.Message], server: str, port: int, sport: int, timeout: float, pipeline: bool
) -> list[tuple[dict[str, Any], float]]:
    """Run queries over TCP: one connection each, or all on one connection (pipeline)."""
    results: list[tuple[dict[str, Any], float]] = []
    groups = [qs] if pipeline else [[q] for q in qs]
    for group in groups:
        sock = socket.socket(_family(server), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if sport:
                sock.bind((_bind_any(server), sport))
            t0 = time.monotonic()
            deadline = t0 + timeout
            sock.settimeout(timeout)
            sock.connect((server, port))
            local_port = sock.getsockname()[1]
            wire = b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in group))
            sock.sendall(wire)  # one send: a pipelined group leaves in one segment
            pending = {q.id: q for q in group}
            got: dict[int, tuple[dns.message.Message, float]] = {}
            while pending:
                head = _recv_exact(sock, 2, deadline)
                if head is None:
                    break
                body = _recv_exact(sock, int.from_bytes(head, "big"), deadline)
                if body is None:
                    break
                try:
                    resp = dns.message.from_wire(body)
                except Exception:
                    continue
                if resp.id in pending:
                    pending.pop(resp.id)
                    got[resp.id] = (resp, (time.monotonic() - t0) * 1000)
            for q in group:
                resp_t = got.get(q.id)
                row = describe(q, resp_t[0] if resp_t else None, "tcp", server, port)
                row["sport"] = local_port
                if resp_t is None:
                    row["error"] = "timeout"
                    results.append((row, (time.monotonic() - t0) * 1000))
                else:
                    results.append((row, resp_t[1]))
        except OSError as exc:
            for q in group:
                row = describe(q, None, "tcp", server, port)
                row["error"] = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                results.append((row, timeout * 1000))
        finally:
            sock.close()
    return results


def system_lookup(name: str, rdtype: str) -> dict[str, Any]:
    family = socket.AF_INET6 if rdtype == "AAAA" else socket.AF_INET
    t0 = time.monotonic()
    row: dict[str, Any] = {"name": name, "type": rdtype, "addresses": [], "error": None}
    try:
        infos = socket.getaddrinfo(name, None, family, socket.SOCK_DGRAM)
        addrs: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in addrs:
                addrs.append(addr)
        row["addresses"] = addrs
    except socket.gaierror as exc:
        names = {v: k for k, v in vars(socket).items() if k.startswith("EAI_") and isinstance(v, int)}
        row["error"] = names.get(exc.errno or 0, str(exc.errno))
    row["elapsed_ms"] = (time.monotonic() - t0) * 1000
    return row


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.client", description="lab DNS client")
    ap.add_argument("--server", help="nameserver address (v4 or v6)")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--tcp", action="store_true", help="query over TCP")
    ap.add_argument("--pipeline", action="store_true", help="TCP: all queries on one connection, one send")
    ap.add_argument("--tcp-fallback", action="store_true", help="UDP, and again over TCP when TC=1")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per query (UDP: no retry)")
    ap.add_argument("--id", type=int, help="DNS id of the first query (next ones +1)")
    ap.add_argument("--sport", type=int, default=0, help="source port to bind")
    ap.add_argument("--no-edns", action="store_true", help="send no OPT record (512-byte UDP limit)")
    ap.add_argument("--no-rd", action="store_true", help="clear the RD bit")
    ap.add_argument("--system", action="store_true", help="getaddrinfo through the system resolver")
    ap.add_argument("queries", nargs="+", metavar="NAME [TYPE]")
    args = ap.parse_args(argv)
    queries = parse_queries(args.queries)
    if args.system:
        return [system_lookup(n, t) for n, t in queries]
    if not args.server:
        ap.error("--server is required unless --system")
    msgs: list[dns.message.Message] = []
    for i, (name, rdtype) in enumerate(queries):
        qm = make_query(name, rdtype, None if args.id is None else args.id + i, not args.no_edns)
        if args.no_rd:
            qm.flags &= ~dns.flags.RD
        msgs.append(qm)
    out: list[dict[str, Any]] = []
    if args.tcp or args.pipeline:
        for row, ms in tcp_queries(msgs, args.server, args.port, args.sport, args.timeout, args.pipeline):
            row["elapsed_ms"] = round(ms, 3)
            out.append(row)
        return out
    sock = socket.socket(_family(args.server), socket.SOCK_DGRAM)
    try:
        sock.bind((_bind_any(args.server), args.sport))
        sport = sock.getsockname()[1]
        for q in msgs:
            t0 = time.monotonic()
            error = "timeout"
            try:
                resp = udp_query(sock, q, args.server, args.port, args.timeout)
            except OSError as exc:  # e.g. network unreachable: a result, not a crash
                resp, error = None, f"{type(exc).__name__}: {exc}"
            row = describe(q, resp, "udp", args.server, args.port)
            row["sport"] = sport
            row["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 3)
            if resp is None:
                row["error"] = error
            out.append(row)
            if args.tcp_fallback and resp is not None and resp.flags & dns.flags.TC:
                for trow, ms in tcp_queries([q], args.server, args.port, 0, args.timeout, False):
                    trow["elapsed_ms"] = round(ms, 3)
                    out.append(trow)
    finally:
        sock.close()
    return out


def main(argv: list[str] | None = None) -> int:
    for row in run(argv):
        print(json.dumps(row, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
