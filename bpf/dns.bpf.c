/* dns.bpf.c — dnsotel's DNS packet capture: a socket filter for AF_PACKET sockets.
 *
 * Compiled ONCE by bcc and shared by the AF_PACKET socket of every network namespace.
 * Each namespace's socket carries a tiny dispatcher (assembled in exporter/capture/ebpf.py,
 * no compilation) that writes the namespace inode into skb->cb[0] and tail-calls
 * dns_filter() through the prog array "dispatch". This works on 5.15, where
 * bpf_get_netns_cookie() is not available to socket filters.
 *
 * Keeps UDP and TCP packets to or from one of the DNS_PORTS (IPv4 with any IHL, IPv6 with
 * extension headers), and writes one struct dns_event per packet to the "events" ring
 * buffer. Always returns 0: nothing is ever queued on the AF_PACKET socket, we only read
 * the ring buffer.
 *
 * Parameters (cflags):
 *   -DDNS_PORTS=53,5353   up to 8 ports, matched against the source or destination port
 *   -DMAX_PAYLOAD=512     DNS bytes copied per packet, 1..4096
 *   -DRINGBUF_PAGES=512   ring buffer size in pages (power of 2)
 *
 * Offsets: for a SOCK_RAW packet socket the kernel runs the filter with skb->data at the
 * MAC header when the device has one (Ethernet, veth, loopback), and at the network
 * header when it has none (tun, wireguard, ipip). The program finds which by comparing
 * the bytes at the network header (bpf_skb_load_bytes_relative, BPF_HDR_START_NET) with
 * the bytes at data+14 and data+0; every later read uses bpf_skb_load_bytes, which also
 * works on non-linear skbs (TCP payload in page fragments).
 */
#include <uapi/linux/bpf.h>
#include "dns_event.h"

#ifndef DNS_PORTS
#define DNS_PORTS 53
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 512
#endif
#if MAX_PAYLOAD < 1 || MAX_PAYLOAD > 4096
#error "MAX_PAYLOAD must be 1..4096"
#endif

#define L2_ETH 14
#define PROTO_IP 0x0800
#define PROTO_IPV6 0x86DD
#define P_UDP 17
#define P_TCP 6
#define MAX_IPV6_EXT 6

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BE16(x) __builtin_bswap16(x)
#define BE32(x) __builtin_bswap32(x)
#else
#define BE16(x) (x)
#define BE32(x) (x)
#endif

/* counters (per CPU), read by EbpfCapture.counters() */
#define CNT_LOST 0       /* ring buffer full: event dropped */
#define CNT_FRAGMENT 1   /* non-first IP fragment of a datagram: skipped (ports unknown) */
#define CNT_MALFORMED 2  /* IP packet whose headers could not be read or parsed */
#define CNT_COPY_ERR 3   /* payload copy failed: event sent with cap_len 0 */
#define CNT_EVENTS 4     /* events written */
#define CNT_MAX 5

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(scratch, struct dns_event, 1);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_PROG_ARRAY(dispatch, 1);

/* DNS_PORTS padded with zeros to 8 entries; port 0 never matches. */
#define PORT_IN_(p, a, b, c, d, e, f, g, h, ...) \
	((p) != 0 && ((p) == (a) || (p) == (b) || (p) == (c) || (p) == (d) || (p) == (e) || \
		      (p) == (f) || (p) == (g) || (p) == (h)))
#define PORT_IN(p, ...) PORT_IN_(p, __VA_ARGS__, 0, 0, 0, 0, 0, 0, 0, 0)
#define IS_DNS_PORT(p) PORT_IN(p, DNS_PORTS)

static __always_inline void count(u32 idx)
{
	u64 *v = counters.lookup(&idx);
	if (v)
		*v += 1;
}

static __always_inline int same16(const u64 *a, const u64 *b)
{
	return a[0] == b[0] && a[1] == b[1];
}

int dns_filter(struct __sk_buff *skb)
{
	u32 proto = skb->protocol;
	if (proto != BE16(PROTO_IP) && proto != BE16(PROTO_IPV6))
		return 0;

	/* where does the network header start, relative to skb->data? */
	u64 net[2], at[2];
	u32 l2 = L2_ETH;
	if (bpf_skb_load_bytes_relative(skb, 0, net, 16, BPF_HDR_START_NET) == 0) {
		if (bpf_skb_load_bytes(skb, L2_ETH, at, 16) == 0 && same16(net, at))
			l2 = L2_ETH;
		else if (bpf_skb_load_bytes(skb, 0, at, 16) == 0 && same16(net, at))
			l2 = 0;
		else {
			count(CNT_MALFORMED);
			return 0;
		}
	}

	u32 zero = 0;
	struct dns_event *ev = scratch.lookup(&zero);
	if (!ev)
		return 0;

	u8 l4proto;
	u32 l4off, l4len;
	u8 evflags = 0;

	if (proto == BE16(PROTO_IP)) {
		u8 h[20];
		if (bpf_skb_load_bytes(skb, l2, h, 20) < 0)
			goto malformed;
		u32 ihl = (h[0] & 0x0f) * 4;
		if ((h[0] >> 4) != 4 || ihl < 20)
			goto malformed;
		l4proto = h[9];
		if (l4proto != P_UDP && l4proto != P_TCP)
			return 0;
		u16 frag = ((u16)h[6] << 8) | h[7];
		if (frag & 0x1fff) {
			count(CNT_FRAGMENT);
			return 0;
		}
		if (frag & 0x2000)
			evflags |= DNS_EV_FRAGMENT;
		u32 tot = ((u32)h[2] << 8) | h[3];
		if (tot == 0) /* TSO packet with tot_len unset: trust the skb */
			tot = skb->len - l2;
		if (tot < ihl)
			goto malformed;
		l4off = l2 + ihl;
		l4len = tot - ihl;
		__builtin_memset(ev->saddr, 0, 32);
		__builtin_memcpy(ev->saddr, &h[12], 4);
		__builtin_memcpy(ev->daddr, &h[16], 4);
		ev->ip_version = 4;
	} else {
		u8 h[40];
		if (bpf_skb_load_bytes(skb, l2, h, 40) < 0)
			goto malformed;
		if ((h[0] >> 4) != 6)
			goto malformed;
		u32 plen = ((u32)h[4] << 8) | h[5];
		if (plen == 0) /* jumbogram / BIG TCP */
			plen = skb->len - l2 - 40;
		u8 nh = h[6];
		u32 off = l2 + 40;
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			if (nh == P_UDP || nh == P_TCP)
				break;
			u8 x[4];
			u32 hl;
			if (nh == 0 || nh == 43 || nh == 60 || nh == 51) { /* hop-by-hop, routing, dstopts, AH */
				if (bpf_skb_load_bytes(skb, off, x, 2) < 0)
					goto malformed;
				hl = nh == 51 ? ((u32)x[1] + 2) * 4 : ((u32)x[1] + 1) * 8;
			} else if (nh == 44) { /* fragment */
				if (bpf_skb_load_bytes(skb, off, x, 4) < 0)
					goto malformed;
				u16 fo = ((u16)x[2] << 8) | x[3];
				if (fo & 0xfff8) {
					count(CNT_FRAGMENT);
					return 0;
				}
				if (fo & 1)
					evflags |= DNS_EV_FRAGMENT;
				hl = 8;
			} else {
				return 0; /* no next header, ESP, or not UDP/TCP */
			}
			nh = x[0];
			off += hl;
			if (plen < hl)
				goto malformed;
			plen -= hl;
		}
		if (nh != P_UDP && nh != P_TCP)
			return 0;
		l4proto = nh;
		l4off = off;
		l4len = plen;
		__builtin_memcpy(ev->saddr, &h[8], 16);
		__builtin_memcpy(ev->daddr, &h[24], 16);
		ev->ip_version = 6;
	}

	u32 payoff, orig;
	u16 sport, dport;
	if (l4proto == P_UDP) {
		u16 u[4];
		if (bpf_skb_load_bytes(skb, l4off, u, 8) < 0)
			goto malformed;
		sport = BE16(u[0]);
		dport = BE16(u[1]);
		if (!IS_DNS_PORT(sport) && !IS_DNS_PORT(dport))
			return 0;
		if (l4len < 8)
			goto malformed;
		payoff = l4off + 8;
		orig = l4len - 8;
		u16 ulen = BE16(u[2]);
		if ((evflags & DNS_EV_FRAGMENT) && ulen >= 8)
			orig = ulen - 8; /* first fragment: the datagram's length, not this fragment's */
		ev->tcp_seq = 0;
		ev->tcp_flags = 0;
	} else {
		u32 t[4];
		if (bpf_skb_load_bytes(skb, l4off, t, 16) < 0)
			goto malformed;
		sport = BE16((u16)(t[0] & 0xffff));
		dport = BE16((u16)(t[0] >> 16));
		if (!IS_DNS_PORT(sport) && !IS_DNS_PORT(dport))
			return 0;
		u32 w = t[3]; /* doff/reserved, flags, window (network order in memory) */
		u32 doff = ((w & 0xff) >> 4) * 4;
		if (doff < 20 || l4len < doff)
			goto malformed;
		payoff = l4off + doff;
		orig = l4len - doff;
		ev->tcp_seq = BE32(t[1]);
		ev->tcp_flags = (w >> 8) & 0xff;
	}

	u32 avail = skb->len > payoff ? skb->len - payoff : 0;
	u64 cap = orig < avail ? orig : avail;
	if (cap > MAX_PAYLOAD)
		cap = MAX_PAYLOAD;
	/* Re-check the register the helper gets, so the verifier (5.15 too) sees 1..MAX_PAYLOAD:
	 * without the barrier clang clamps one copy and passes another. */
	asm volatile("" : "+r"(cap));
	if (cap >= 1 && cap <= MAX_PAYLOAD) {
		if (bpf_skb_load_bytes(skb, payoff, ev->payload, cap) < 0) {
			count(CNT_COPY_ERR);
			cap = 0;
		}
	} else {
		cap = 0;
	}
	asm volatile("" : "+r"(cap));
	if (cap > MAX_PAYLOAD)
		cap = 0;
	if (cap < orig)
		evflags |= DNS_EV_TRUNCATED;

	ev->ts_ns = bpf_ktime_get_boot_ns();
	ev->netns = skb->cb[0];
	ev->ifindex = skb->ifindex;
	ev->orig_len = orig;
	ev->sport = sport;
	ev->dport = dport;
	ev->cap_len = cap;
	ev->pkt_type = skb->pkt_type;
	ev->proto = l4proto;
	ev->flags = evflags;
	ev->_pad = 0;

	if (events.ringbuf_output(ev, DNS_EVENT_HDR_LEN + cap, 0) != 0)
		count(CNT_LOST);
	else
		count(CNT_EVENTS);
	return 0;

malformed:
	count(CNT_MALFORMED);
	return 0;
}
