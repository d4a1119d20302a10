"""DNS-over-TCP reassembly: message boundaries, retransmissions, reordering, flow life
cycle and bounds. Messages are real DNS messages built with dnspython; the oracle is the
list of messages that were written into the stream."""

from __future__ import annotations

import random
import struct

import dns.message
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.capture.packet import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN
from exporter.capture.tcp import TcpReassembler
from exporter.records import IPPROTO_TCP, IPPROTO_UDP, PACKET_UNKNOWN, PacketMeta, Segment

ISN = 1_000_000


def msg(qid: int, name: str = "example.test") -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


def seg(
    payload: bytes = b"",
    seq: int = ISN + 1,
    flags: int = TCP_PSH | TCP_ACK,
    sport: int = 40000,
    dport: int = 53,
    ts: int = 0,
    netns: int = 1,
    orig_len: int | None = None,
    transport: int = IPPROTO_TCP,
    src: str = "198.18.0.1",
    dst: str = "198.18.0.2",
) -> Segment:
    meta = PacketMeta(ts, netns, 0, PACKET_UNKNOWN, transport, src, sport, dst, dport, False)
    return Segment(meta, payload, len(payload) if orig_len is None else orig_len, seq % (1 << 32), flags)


def syn(seq: int = ISN, **kw: object) -> Segment:
    return seg(b"", seq, TCP_SYN, **kw)  # type: ignore[arg-type]


def ids(out: list[tuple[PacketMeta, bytes]]) -> list[int]:
    return [dns.message.from_wire(wire).id for _, wire in out]


def test_udp_passes_through() -> None:
    r = TcpReassembler()
    s = seg(msg(7), transport=IPPROTO_UDP)
    assert r.feed(s) == [(s.meta, s.payload)]
    assert r.stats.segments == 0 and r.flows == 0


def test_one_message_one_segment() -> None:
    r = TcpReassembler()
    assert r.feed(syn()) == []
    s = seg(framed(msg(1)))
    out = r.feed(s)
    assert ids(out) == [1] and out[0][0] is s.meta
    assert r.stats.messages == 1 and r.stats.flows_opened == 1


def test_two_messages_in_one_segment() -> None:
    r = TcpReassembler()
    r.feed(syn())
    assert ids(r.feed(seg(framed(msg(1), msg(2))))) == [1, 2]


def test_message_split_across_segments_meta_is_completing_segment() -> None:
    r = TcpReassembler()
    r.feed(syn())
    data = framed(msg(1), msg(2))
    cuts = [1, 2, 30, len(data) - 1]  # inside the length prefix, inside a message, ...
    pos, seq, out = 0, ISN + 1, []
    for i, cut in enumerate([*cuts, len(data)]):
        s = seg(data[pos:cut], seq=seq, ts=i)
        got = r.feed(s)
        out += [(s.meta.ts_ns, m) for m, _ in got]
        seq += cut - pos
        pos = cut
    first_end = 2 + len(msg(1))
    assert len(out) == 2
    # message 1 completes in the segment holding its last byte, message 2 in the last one
    assert out[0][0] == next(i for i, c in enumerate([*cuts, len(data)]) if c >= first_end)
    assert out[1][0] == len(cuts)


def test_byte_at_a_time() -> None:
    r = TcpReassembler()
    r.feed(syn())
    data = framed(msg(1), msg(2), msg(3))
    out = []
    for i, b in enumerate(data):
        out += r.feed(seg(bytes([b]), seq=ISN + 1 + i))
    assert ids(out) == [1, 2, 3]


def test_retransmission_and_overlap() -> None:
    r = TcpReassembler()
    r.feed(syn())
    data = framed(msg(1), msg(2))
    half = 20
    assert r.feed(seg(data[:half])) == []
    assert r.feed(seg(data[:half])) == []  # exact duplicate
    assert r.stats.duplicate_segments == 1
    # retransmission that overlaps what we have and brings the rest
    assert ids(r.feed(seg(data[10:], seq=ISN + 1 + 10))) == [1, 2]
    assert r.stats.overlapping_segments == 1
    assert r.feed(seg(data, seq=ISN + 1)) == []  # whole-stream retransmission: nothing new
    assert r.stats.messages == 2


def test_out_of_order_held_then_filled() -> None:
    r = TcpReassembler()
    r.feed(syn())
    data = framed(msg(1), msg(2), msg(3))
    a, b, c = data[:25], data[25:60], data[60:]
    assert r.feed(seg(c, seq=ISN + 1 + 60)) == []
    assert r.feed(seg(b, seq=ISN + 1 + 25)) == []
    assert r.stats.out_of_order_held == 2
    last = seg(a, seq=ISN + 1, ts=99)
    out = r.feed(last)
    assert ids(out) == [1, 2, 3] and all(m is last.meta for m, _ in out)
    assert r.buffered_bytes() == 0


def test_gap_given_up_when_hold_full() -> None:
    r = TcpReassembler(max_ooo_segments=2)
    r.feed(syn())
    m = [framed(msg(i)) for i in range(1, 6)]
    seqs = [ISN + 1]
    for x in m:
        seqs.append(seqs[-1] + len(x))
    # message 1 lost by the capture; 2, 3, 4 arrive: the third overflows the hold
    assert r.feed(seg(m[1], seq=seqs[1])) == []
    assert r.feed(seg(m[2], seq=seqs[2])) == []
    out = r.feed(seg(m[3], seq=seqs[3]))
    assert ids(out) == [2, 3, 4]
    assert r.stats.gaps_skipped == 1
    assert ids(r.feed(seg(m[4], seq=seqs[4]))) == [5]  # and the stream goes on in step


def test_syn_with_data_fast_open() -> None:
    r = TcpReassembler()
    assert ids(r.feed(seg(framed(msg(9)), seq=ISN, flags=TCP_SYN))) == [9]


def test_fin_uses_data_then_drops_flow() -> None:
    r = TcpReassembler()
    r.feed(syn())
    assert ids(r.feed(seg(framed(msg(1)), flags=TCP_FIN | TCP_ACK))) == [1]
    assert r.flows == 0 and r.stats.flows_closed == 1
    assert r.feed(seg(b"", seq=ISN + 100, flags=TCP_FIN | TCP_ACK)) == []  # retransmitted FIN
    assert r.flows == 0


def test_rst_drops_both_directions() -> None:
    r = TcpReassembler()
    r.feed(syn())
    r.feed(syn(seq=5, sport=53, dport=40000, src="198.18.0.2", dst="198.18.0.1"))
    r.feed(seg(framed(msg(1))[:5]))
    assert r.flows == 2
    r.feed(seg(b"", seq=6, flags=TCP_RST, sport=53, dport=40000, src="198.18.0.2", dst="198.18.0.1"))
    assert r.flows == 0 and r.stats.flows_reset == 2 and r.stats.partial_dropped == 1


def test_truncated_segment_breaks_flow_until_syn() -> None:
    r = TcpReassembler()
    r.feed(syn())
    data = framed(msg(1), msg(2))
    assert r.feed(seg(data[:20], orig_len=len(data))) == []
    assert r.stats.truncated_segments == 1
    assert r.feed(seg(framed(msg(3)), seq=ISN + 1 + len(data))) == []  # ignored: cannot find boundaries
    assert r.stats.broken_segments == 1
    r.feed(syn(seq=77))
    assert ids(r.feed(seg(framed(msg(4)), seq=78))) == [4]


def test_sequence_wraparound() -> None:
    r = TcpReassembler()
    isn = (1 << 32) - 10
    r.feed(syn(seq=isn))
    data = framed(msg(1), msg(2))
    out = r.feed(seg(data[:15], seq=isn + 1))
    out += r.feed(seg(data[15:], seq=isn + 16))  # seq wraps past 2^32 here
    assert ids(out) == [1, 2]
    assert r.feed(seg(data[:15], seq=isn + 1)) == []  # duplicate from before the wrap
    assert r.stats.duplicate_segments == 1


def test_midstream_start() -> None:
    r = TcpReassembler()
    assert ids(r.feed(seg(framed(msg(1)), seq=123456))) == [1]
    assert r.stats.midstream_starts == 1


def test_flows_are_separate_by_netns_and_ports() -> None:
    r = TcpReassembler()
    a, b = framed(msg(1)), framed(msg(2))
    r.feed(syn(netns=1))
    r.feed(syn(netns=2))
    assert r.feed(seg(a[:10], netns=1)) == []
    assert r.feed(seg(b[:10], netns=2)) == []
    assert ids(r.feed(seg(a[10:], seq=ISN + 11, netns=1))) == [1]
    assert ids(r.feed(seg(b[10:], seq=ISN + 11, netns=2))) == [2]


def test_max_flows_evicts_least_recent() -> None:
    r = TcpReassembler(max_flows=2)
    r.feed(syn(sport=1))
    r.feed(syn(sport=2))
    r.feed(seg(framed(msg(1))[:4], sport=1))  # flow 1 is now the most recent
    r.feed(syn(sport=3))  # evicts flow 2
    assert r.flows == 2 and r.stats.flows_evicted == 1
    assert ids(r.feed(seg(framed(msg(1))[4:], seq=ISN + 5, sport=1))) == [1]


def test_too_large_message_skipped_in_step() -> None:
    r = TcpReassembler(max_buffer=200)
    big = msg(1, "a" * 60 + "." + "b" * 60 + "." + "c" * 60 + ".test")
    assert len(big) + 2 > 200
    data = framed(big, msg(2))
    out = r.feed(seg(data[:100], seq=5)) + r.feed(seg(data[100:], seq=105))
    assert ids(out) == [2]
    assert r.stats.messages_too_large == 1
    assert r.buffered_bytes() <= 200


def test_stats_as_dict_names() -> None:
    d = TcpReassembler().stats.as_dict()
    assert {"messages", "flows_evicted", "truncated_segments", "out_of_order_dropped"} <= set(d)
    assert all(v == 0 for v in d.values())


@settings(max_examples=200, deadline=None)
@given(
    n_msgs=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    isn=st.integers(0, 2**32 - 1),
    dup_rate=st.floats(0, 0.5),
)
def test_random_segmentation_reordering_duplication(
    n_msgs: int, seed: int, isn: int, dup_rate: float
) -> None:
    """Any segmentation, local reordering (within the hold window) and duplication gives back the messages."""
    rnd = random.Random(seed)
    messages = [msg(i, f"n{i}.{'x' * rnd.randint(1, 40)}.test") for i in range(n_msgs)]
    data = framed(*messages)
    cuts = sorted(rnd.sample(range(1, len(data)), k=min(len(data) - 1, rnd.randint(0, 12))))
    bounds = [0, *cuts, len(data)]
    segments = [(bounds[i], data[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    # swap neighbours (reordering within a window of 2) and duplicate some segments
    order = list(range(len(segments)))
    for i in range(0, len(order) - 1, 2):
        if rnd.random() < 0.5:
            order[i], order[i + 1] = order[i + 1], order[i]
    stream = []
    for i in order:
        stream.append(segments[i])
        if rnd.random() < dup_rate:
            stream.append(segments[rnd.randint(0, i)])  # a retransmission of something already sent
    r = TcpReassembler(max_ooo_segments=8)
    out = r.feed(syn(seq=isn))
    for off, chunk in stream:
        out += r.feed(seg(chunk, seq=isn + 1 + off))
    assert [w for _, w in out] == messages
    assert r.buffered_bytes() == 0


GARBAGE = st.tuples(st.integers(0, 5), st.integers(0, 2**32 - 1), st.binary(max_size=300), st.integers(0, 7))


@settings(max_examples=100, deadline=None)
@given(st.lists(GARBAGE))
def test_garbage_stays_bounded(segments: list[tuple[int, int, bytes, int]]) -> None:
    r = TcpReassembler(max_flows=3, max_buffer=512, max_ooo_segments=2)
    for port, sq, payload, flags in segments:
        r.feed(seg(payload, seq=sq, sport=port, flags=flags))
        assert r.flows <= 3
        assert r.buffered_bytes() <= 3 * 512
