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
 *   -DRINGBUF_PAGES=2048  ring buffer size in pages (power of 2)
 *   -DKERNEL_PAIRING      pair UDP queries with their responses here (see kpair() below)
 *   -DMAX_PENDING=65536   entries of the pending-query table (KERNEL_PAIRING)
 *   -DKERNEL_AGG -DAGG_SLOW_NS=N -DAGG_BUCKET_INDEX(l)=...
 *                         with KERNEL_PAIRING: count ordinary exchanges in the "agg" map
 *                         instead of writing them to the ring buffer (agg_ordinary())
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
#define RINGBUF_PAGES 2048
#endif
#ifndef MAX_PENDING
#define MAX_PENDING 65536
#endif
#ifndef AGG_MAX
#define AGG_MAX 4096
#endif
#if defined(KERNEL_AGG) && (!defined(KERNEL_PAIRING) || !defined(AGG_SLOW_NS) || !defined(AGG_BUCKET_INDEX))
#error "KERNEL_AGG needs KERNEL_PAIRING, AGG_SLOW_NS and AGG_BUCKET_INDEX"
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
/* KERNEL_PAIRING only */
#define CNT_KQUERIES 5    /* UDP queries that entered the pending table (first sightings) */
#define CNT_KRETRANS 6    /* queries that repeated a pending one: counted, no event */
#define CNT_KPAIRED 7     /* responses paired here: one PAIR event each */
#define CNT_KSUPERSEDED 8 /* pending queries replaced by a new question on the same key */
#define CNT_KFULL 9       /* queries sent to user space because the pending table was full */
#define CNT_KNOTICES 10   /* QUERY_NOTICE records written (server queries with an upstream query) */
#define CNT_KAGG 11       /* exchanges counted in the agg map, no record (KERNEL_AGG) */
#define CNT_MAX 12

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

/* No wakeup per record: user space drains the ring in batches on a short tick
 * (exporter/capture/ebpf.py, RING_TICK_MS). A wakeup per record cost a consumer wakeup,
 * a poll round trip and an irq_work in the sender's context for every DNS packet. */
#ifndef RINGBUF_FLAGS
#define RINGBUF_FLAGS BPF_RB_NO_WAKEUP
#endif
BPF_PERCPU_ARRAY(scratch, struct dns_event, 1);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_PROG_ARRAY(dispatch, 1);
#ifdef KERNEL_PAIRING
/* Not preallocated: memory follows the queries actually in flight, not MAX_PENDING. */
BPF_F_TABLE("hash", struct pending_key, struct pending_val, pending, MAX_PENDING, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(pscratch, struct pending_val, 1);
#endif

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

#ifdef KERNEL_PAIRING
#define PACKET_OUTGOING 4
#define ROLE_CLIENT 0
#define ROLE_SERVER 1
#define KP_PLAIN 0    /* emit the packet as a PACKET record */
#define KP_CONSUMED 1 /* nothing (more) to emit */
#define KP_PAIR 2     /* ev is now a PAIR record of *len bytes */
#define MSG_COPY (12 + DNS_QMAX < MAX_PAYLOAD ? 12 + DNS_QMAX : MAX_PAYLOAD)
/* question bytes compared: a multiple of 4, and within the payload a message can carry */
#define QCMP (DNS_QMAX < ((MAX_PAYLOAD - 12) & ~3) ? DNS_QMAX : ((MAX_PAYLOAD - 12) & ~3))
#if MAX_PAYLOAD < 16
#error "KERNEL_PAIRING needs MAX_PAYLOAD >= 16"
#endif
#define NOTICE_COPY (DNS_NOTICE_MAX < MAX_PAYLOAD ? DNS_NOTICE_MAX : MAX_PAYLOAD)

/* ev (a query's header and n payload bytes) as a QUERY_NOTICE record: a server-side query
 * just entered the pending table, so user space can track it while it is pending. */
static __always_inline void notice(struct dns_event *ev, u32 n)
{
	if (n > NOTICE_COPY)
		n = NOTICE_COPY;
	asm volatile("" : "+r"(n));
	if (n > MAX_PAYLOAD)
		return;
	ev->kind = DNS_KIND_QUERY_NOTICE;
	ev->cap_len = n;
	if (n < ev->orig_len)
		ev->flags |= DNS_EV_TRUNCATED;
	if (events.ringbuf_output(ev, DNS_EVENT_HDR_LEN + n, RINGBUF_FLAGS) != 0) {
		count(CNT_LOST);
	} else {
		count(CNT_EVENTS);
		count(CNT_KNOTICES);
	}
}

/* The first question (name + type + class) of the message in p[0..cap): its length goes
 * to out->qlen and its name's length (root label included) to out->namelen, and 0 is
 * returned; -1 when the kernel does not pair it (compressed or malformed name, cut by the
 * capture, longer than DNS_QMAX). The results go through map memory on purpose: read
 * back, they are unknown to the verifier, so the states of the 128 ways out of this loop
 * merge instead of each exploring the rest of the program. */
static __always_inline int question_len(const u8 *p, u32 cap, struct pending_val *out)
{
	u32 off = 12;
#pragma clang loop unroll(disable) vectorize(disable) interleave(disable)
	for (int i = 0; i < 128; i++) {
		if (off >= cap)
			return -1;
		u32 o = off;
		asm volatile("" : "+r"(o)); /* one register for the bound check and the access */
		if (o >= MAX_PAYLOAD)
			return -1;
		u8 l = p[o];
		if (l == 0) {
			u32 n = off + 1 - 12;
			if (n + 4 > QCMP || off + 1 + 4 > cap)
				return -1;
			*(volatile u16 *)&out->namelen = n;
			*(volatile u16 *)&out->qlen = n + 4;
			return 0;
		}
		if (l & 0xc0)
			return -1;
		off += (u32)l + 1;
	}
	return -1;
}

/* 1 when a < b, for a, b < 2^31, computed without a branch (see normalize()) */
static __always_inline u32 lt(u32 a, u32 b)
{
	return (a - b) >> 31;
}

/* dst[0..QCMP) = the question at src (qlen bytes, the name's namelen first) as the kernel
 * stores and compares it: the name's A-Z folded to a-z (like the decoder's lower-cased
 * names), type and class as they are, zeros after qlen. Branch-free: with a branch on
 * i < qlen per byte, the verifier explores every (qlen, namelen) split and gives up. */
static __always_inline void normalize(u8 *dst, const u8 *src, u32 qlen, u32 namelen)
{
#pragma clang loop unroll(disable) vectorize(disable) interleave(disable)
	for (u32 i = 0; i < QCMP; i++) {
		u32 c = src[i];
		u32 up = lt(c, 'Z' + 1) & lt('A' - 1, c);
		c += (up & lt(i, namelen)) << 5;
		c &= -lt(i, qlen);
		dst[i] = c;
	}
}

/* Two normalized questions (QCMP bytes each, 4-byte aligned) are equal. */
static __always_inline int same_question(const u8 *a, const u8 *b)
{
	u32 diff = 0;
#pragma clang loop unroll(disable) vectorize(disable) interleave(disable)
	for (u32 i = 0; i < QCMP / 4; i++) {
		u32 x, y;
		__builtin_memcpy(&x, a + 4 * i, 4);
		__builtin_memcpy(&y, b + 4 * i, 4);
		diff |= x ^ y;
	}
	return diff == 0;
}

/* The resolver side of a resolution. "serving" maps (netns, normalized question) to the
 * earliest pending server-side query for it (a stale entry -- its query answered or gone --
 * is replaced by the next server query). A server query is announced to user space with a
 * QUERY_NOTICE when the resolver sends a query for its question in the same netns (its
 * upstream query), or when a second server query for the question arrives while it is
 * pending (a resolver coalescing identical queries: the second one is announced too).
 * Announced queries are "noticed": their exchanges always reach user space, so the
 * resolution tracker sees each one from query to end. A cache hit, answered before the
 * next query for its question, announces nothing. LRU: entries of queries that were never
 * answered age out. */
struct serving_key {
	u32 netns;
	u8 q[QCMP];
};
struct serving_val {
	struct pending_key pk;
};
BPF_F_TABLE("lru_hash", struct serving_key, struct serving_val, serving, MAX_PENDING, 0);
BPF_PERCPU_ARRAY(sscratch, struct serving_key, 1);

/* The pending server query s names, when it is still pending with question q (qlen bytes). */
static __always_inline struct pending_val *serving_query(struct serving_val *s, const u8 *q, u32 ql)
{
	struct pending_val *p = pending.lookup(&s->pk);
	if (p && p->qlen == ql && same_question(&p->msg[12], q))
		return p;
	return 0;
}

/* ev as the QUERY_NOTICE of the pending server query (pk, p): its time, addresses, header
 * and normalized question. Overwrites ev. */
static __always_inline void notice_pending(struct dns_event *ev, const struct pending_key *pk,
					   const struct pending_val *p)
{
	ev->ts_ns = p->ts_ns;
	ev->netns = pk->netns;
	ev->ifindex = p->ifindex;
	__builtin_memcpy(ev->saddr, pk->caddr, 16);
	__builtin_memcpy(ev->daddr, p->server, 16);
	ev->tcp_seq = 0;
	ev->sport = pk->cport;
	ev->dport = p->server_port;
	ev->pkt_type = p->pkt_type;
	ev->ip_version = p->ip_version;
	ev->proto = P_UDP;
	ev->tcp_flags = 0;
	ev->flags = 0;
	__builtin_memcpy(ev->payload, p->msg, MSG_COPY);
	u32 n = 12 + (u32)p->qlen;
	if (n > MSG_COPY)
		n = MSG_COPY;
	ev->orig_len = n;
	notice(ev, n);
}

/* After a query (key, nv) entered the pending table: the resolver asks upstream, or queues
 * a second query, while it serves the question (sp, the earliest server query for it, under
 * s): announce sp (once), then the new query when it is a noticed server query. In time
 * order, so user space sees the earliest first. ev is overwritten. */
static __always_inline void announce(struct dns_event *ev, struct serving_val *s, struct pending_val *sp,
				     const struct pending_key *key, const struct pending_val *nv)
{
	if (s && sp && !sp->noticed) {
		sp->noticed = 1;
		notice_pending(ev, &s->pk, sp);
	}
	if (key->role == ROLE_SERVER && nv->noticed)
		notice_pending(ev, key, nv);
}

#ifdef KERNEL_AGG
BPF_F_TABLE("percpu_hash", struct agg_key, struct agg_val, agg, AGG_MAX, 0);
BPF_PERCPU_ARRAY(azero, struct agg_val, 1);

/* An answered exchange that needs no record: user space would only add it to
 * dns.lookup.duration (no span: NOERROR with answers, no TC, faster than AGG_SLOW_NS, not
 * announced to the resolution tracker). The extended rcode lives in the OPT record, which
 * the kernel checks only where resolvers put it without options: the message's last 11
 * bytes. Anything else -- an OPT with options, other additional records, a message the
 * capture cut -- goes to user space, which decodes it. */
static __always_inline int agg_ordinary(const u8 *p, u32 cap, u32 orig, u64 lat)
{
	if ((p[3] & 0x0f) != 0 || (p[2] & 0x02) != 0 || lat >= AGG_SLOW_NS)
		return 0;
	if (p[6] == 0 && p[7] == 0) /* no answer: user space tracks search-list sequences */
		return 0;
	if (p[10] == 0 && p[11] == 0)
		return 1;
	if (p[10] != 0 || p[11] != 1 || cap != orig || cap < 12 + 11)
		return 0;
	u32 o = cap - 11;
	asm volatile("" : "+r"(o));
	if (o > MAX_PAYLOAD - 11)
		return 0;
	const u8 *t = p + o; /* every byte from one checked pointer */
	asm volatile("" : "+r"(t));
	/* name ".", type OPT (41), then class, ext-rcode, version, flags, rdlength 0 */
	return t[0] == 0 && t[1] == 0 && t[2] == 41 && t[5] == 0 && t[9] == 0 && t[10] == 0;
}

/* Count the exchange (query v under key, question in q) in the agg map; 0 when counted. */
static __always_inline int agg_add(const struct pending_key *key, const struct pending_val *v,
				   const u8 *msg, u32 namelen, u64 lat)
{
	struct agg_key ak = {};
	ak.netns = key->netns;
	__builtin_memcpy(ak.server, v->server, 16);
	ak.server_port = v->server_port;
	ak.role = key->role;
	ak.ip_version = v->ip_version;
	u32 o = 12 + namelen;
	asm volatile("" : "+r"(o));
	if (o > 12 + DNS_QMAX - 2)
		return -1;
	const u8 *t = msg + o; /* both bytes from one checked pointer */
	asm volatile("" : "+r"(t));
	ak.qtype = ((u16)t[0] << 8) | t[1];
	struct agg_val *a = agg.lookup(&ak);
	if (!a) {
		u32 zero = 0;
		struct agg_val *z = azero.lookup(&zero);
		if (!z)
			return -1;
		agg.insert(&ak, z); /* fails when full (or a racing insert: then the lookup finds it) */
		a = agg.lookup(&ak);
		if (!a)
			return -1;
	}
	if (a->count == 0 || lat < a->min_ns)
		a->min_ns = lat;
	if (lat > a->max_ns)
		a->max_ns = lat;
	a->count += 1;
	a->packets += 2 + v->retransmits;
	a->sum_ns += lat;
	u32 i = AGG_BUCKET_INDEX(lat);
	if (i >= DNS_AGG_BUCKETS)
		i = DNS_AGG_BUCKETS - 1;
	a->buckets[i] += 1;
	return 0;
}
#endif

/* Pair a UDP DNS message in ev (all header fields set) against the pending table. */
static __always_inline int kpair(struct dns_event *ev, u32 cap, u32 *len)
{
	if (cap < 12 || cap > MAX_PAYLOAD)
		return KP_PLAIN;
	u8 *p = ev->payload;
	u16 id = ((u16)p[0] << 8) | p[1];
	u16 qd = ((u16)p[4] << 8) | p[5];
	struct pending_key key = {};
	key.netns = ev->netns;
	key.id = id;
	key.proto = ev->proto;
	u32 zero = 0;
	struct pending_val *nv = pscratch.lookup(&zero);
	if (!nv)
		return KP_PLAIN;
	u32 namelen = 0, ql = 0;

	if (!(p[2] & 0x80)) { /* query */
		if (qd == 0)
			return KP_PLAIN;
		if (question_len(p, cap, nv) < 0)
			return KP_PLAIN;
		ql = *(volatile u16 *)&nv->qlen;
		namelen = *(volatile u16 *)&nv->namelen;
		normalize(&nv->msg[12], &p[12], ql, namelen);
		key.role = ev->pkt_type == PACKET_OUTGOING ? ROLE_CLIENT : ROLE_SERVER;
		key.cport = ev->sport;
		__builtin_memcpy(key.caddr, ev->saddr, 16);
		struct pending_val *old = pending.lookup(&key);
		if (old && old->qlen == ql && same_question(&old->msg[12], &nv->msg[12])) {
			u32 n = old->retransmits;
			if (n < 4)
				old->rts_ns[n & 3] = ev->ts_ns;
			old->retransmits = n + 1;
			count(CNT_KRETRANS);
			return KP_CONSUMED;
		}
		nv->ts_ns = ev->ts_ns;
		nv->retransmits = 0;
		nv->noticed = 0;
		__builtin_memcpy(nv->server, ev->daddr, 16);
		nv->server_port = ev->dport;
		nv->ifindex = ev->ifindex;
		nv->pkt_type = ev->pkt_type;
		nv->ip_version = ev->ip_version;
		__builtin_memcpy(nv->msg, p, 4); /* id, flags */
		nv->msg[4] = 0; /* counts: one question, nothing else */
		nv->msg[5] = 1;
		__builtin_memset(&nv->msg[6], 0, 6);

		/* the resolver side: which server query serves this question (see "serving") */
		struct serving_key *sk = sscratch.lookup(&zero);
		if (!sk)
			return KP_PLAIN;
		sk->netns = ev->netns;
		__builtin_memcpy(sk->q, &nv->msg[12], QCMP);
		struct serving_val *s = serving.lookup(sk);
		struct pending_val *sp = s ? serving_query(s, &nv->msg[12], ql) : 0;
		if (key.role == ROLE_SERVER) {
			if (!sp) {
				struct serving_val sv = {};
				__builtin_memcpy(&sv.pk, &key, sizeof(key));
				serving.update(sk, &sv);
			} else {
				nv->noticed = 1; /* a second one pending: not a cache hit */
			}
		}

		if (old) {
			/* same key, new question: report the old query (user space: unanswered) */
			u64 now = ev->ts_ns;
			ev->kind = DNS_KIND_SUPERSEDED;
			ev->q_ts_ns = now;
			ev->ts_ns = old->ts_ns;
			ev->q_retransmits = old->retransmits;
			__builtin_memcpy(ev->q_rts_ns, old->rts_ns, sizeof(ev->q_rts_ns));
			__builtin_memcpy(ev->daddr, old->server, 16);
			ev->dport = old->server_port;
			ev->ifindex = old->ifindex;
			ev->pkt_type = old->pkt_type;
			ev->flags = 0;
			u32 olen = 12 + (u32)old->qlen;
			__builtin_memcpy(ev->payload, old->msg, MSG_COPY);
			if (olen > MSG_COPY)
				olen = MSG_COPY;
			ev->cap_len = olen;
			ev->orig_len = olen;
			if (events.ringbuf_output(ev, DNS_EVENT_HDR_LEN + olen, RINGBUF_FLAGS) != 0)
				count(CNT_LOST);
			else
				count(CNT_EVENTS);
			count(CNT_KSUPERSEDED);
			if (pending.update(&key, nv) != 0)
				return KP_CONSUMED; /* cannot happen for an existing key */
			count(CNT_KQUERIES);
			announce(ev, s, sp, &key, nv);
			return KP_CONSUMED;
		}
		if (pending.insert(&key, nv) != 0) {
			/* table full (or a racing insert): user space pairs this one */
			count(CNT_KFULL);
			return KP_PLAIN;
		}
		count(CNT_KQUERIES);
		announce(ev, s, sp, &key, nv);
		return KP_CONSUMED;
	}

	/* response */
	key.role = ev->pkt_type == PACKET_OUTGOING ? ROLE_SERVER : ROLE_CLIENT;
	key.cport = ev->dport;
	__builtin_memcpy(key.caddr, ev->daddr, 16);
	struct pending_val *v = pending.lookup(&key);
	if (!v)
		return KP_PLAIN;
	u32 out = DNS_EVENT_HDR_LEN + cap;
	ev->q_msg_len = 0;
	if (qd == 0) {
		/* an error response without a question matches on the key alone */
		if ((p[3] & 0x0f) == 0)
			return KP_PLAIN;
#if MAX_PAYLOAD >= DNS_NOQ_RESP_MAX + 12 + DNS_QMAX
		if (cap > DNS_NOQ_RESP_MAX)
			return KP_PLAIN;
		__builtin_memcpy(&ev->payload[DNS_NOQ_RESP_MAX], v->msg, 12 + DNS_QMAX);
		u32 qm = 12 + (u32)v->qlen;
		if (qm > 12 + DNS_QMAX)
			return KP_PLAIN;
		ev->q_msg_len = qm;
		out = DNS_EVENT_HDR_LEN + DNS_NOQ_RESP_MAX + qm;
#else
		return KP_PLAIN;
#endif
	} else {
		if (question_len(p, cap, nv) < 0)
			return KP_PLAIN;
		ql = *(volatile u16 *)&nv->qlen;
		namelen = *(volatile u16 *)&nv->namelen;
		normalize(&nv->msg[12], &p[12], ql, namelen);
		if (v->qlen != ql || !same_question(&v->msg[12], &nv->msg[12]))
			return KP_PLAIN;
	}
	ev->q_ts_ns = v->ts_ns;
	ev->q_retransmits = v->retransmits;
	__builtin_memcpy(ev->q_rts_ns, v->rts_ns, sizeof(ev->q_rts_ns));
	__builtin_memcpy(ev->q_daddr, v->server, 16);
	ev->q_dport = v->server_port;
	ev->q_ifindex = v->ifindex;
	ev->q_pkt_type = v->pkt_type;
	ev->q_flags = ((u16)v->msg[2] << 8) | v->msg[3];
	ev->_pad = 0;
#ifdef KERNEL_AGG
	u64 lat = ev->ts_ns - v->ts_ns;
	int ordinary = qd != 0 && !v->noticed && agg_ordinary(p, cap, ev->orig_len, lat);
	if (ordinary) {
		/* what agg_add needs of the query, kept in the scratch nv (v is freed below) */
		__builtin_memcpy(nv->server, v->server, 16);
		nv->server_port = v->server_port;
		nv->ip_version = v->ip_version;
		nv->retransmits = v->retransmits;
	}
#endif
	/* only the side whose delete succeeds reports: user space expiring it took it first */
	if (pending.delete(&key) != 0)
		return KP_PLAIN;
#ifdef KERNEL_AGG
	if (ordinary) {
		if (agg_add(&key, nv, nv->msg, namelen, lat) == 0) {
			count(CNT_KAGG);
			return KP_CONSUMED;
		}
	}
#endif
	ev->kind = DNS_KIND_PAIR;
	count(CNT_KPAIRED);
	*len = out;
	return KP_PAIR;
}
#endif

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
	ev->kind = DNS_KIND_PACKET;

	u32 len = DNS_EVENT_HDR_LEN + cap;
#ifdef KERNEL_PAIRING
	/* a message cut by MAX_PAYLOAD or a first fragment pairs too, when its question is whole */
	if (l4proto == P_UDP) {
		int r = kpair(ev, cap, &len);
		if (r == KP_CONSUMED)
			return 0;
		if (r == KP_PLAIN) {
			ev->kind = DNS_KIND_PACKET;
			len = DNS_EVENT_HDR_LEN + cap;
		}
	}
	asm volatile("" : "+r"(len));
	if (len > DNS_EVENT_HDR_LEN + MAX_PAYLOAD)
		return 0;
#endif
	if (events.ringbuf_output(ev, len, RINGBUF_FLAGS) != 0)
		count(CNT_LOST);
	else
		count(CNT_EVENTS);
	return 0;

malformed:
	count(CNT_MALFORMED);
	return 0;
}
