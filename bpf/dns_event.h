/* dns_event.h — the ABI between bpf/dns.bpf.c and exporter/capture/events.py.
 *
 * One record per DNS packet (or, with KERNEL_PAIRING, per paired exchange), written to the
 * "events" ring buffer. Only the header and the first cap_len payload bytes are written
 * (the record is DNS_EVENT_HDR_LEN + cap_len bytes long), so a 60-byte query costs ~200
 * bytes of ring space whatever MAX_PAYLOAD is.
 *
 * Change these structs and the mirrors in events.py / kpairing.py together: the loader
 * compares sizeof() and every field offset of the compiled structs against the mirrors
 * and refuses to start on a mismatch.
 */
#ifndef DNSOTEL_DNS_EVENT_H
#define DNSOTEL_DNS_EVENT_H

#ifndef MAX_PAYLOAD
#define MAX_PAYLOAD 512
#endif

/* flags */
#define DNS_EV_FRAGMENT 0x01 /* first fragment of a fragmented IP datagram: payload is partial */
#define DNS_EV_TRUNCATED 0x02 /* cap_len < orig_len (MAX_PAYLOAD or the skb was shorter) */

/* kind: what the record is */
#define DNS_KIND_PACKET 0     /* one packet (query, response, TCP segment): user space pairs it */
#define DNS_KIND_PAIR 1       /* a response the kernel paired: the header and payload are the
			       * response's, q_* describe its query */
#define DNS_KIND_SUPERSEDED 2 /* a pending query abandoned for a new question on the same key:
			       * the header is the old query's, the payload its question as a DNS
			       * message (query header + question), q_ts the new query's time */
#define DNS_KIND_QUERY_NOTICE 3 /* a server-side query the kernel holds, announced when the
				 * resolver sends an upstream query for its question (or when it
				 * arrives while such an upstream query is in flight): the query's
				 * time and addresses, its header and normalized question as the
				 * payload; q_* unset. Lets user space parent the upstream query
				 * under it. A cache hit has no upstream query and no notice. */

/* Longest question (name + type + class) the kernel pairs; longer ones take the user path. */
#define DNS_QMAX 160
/* Payload bytes a QUERY_NOTICE carries at most (the question and usually the EDNS record). */
#define DNS_NOTICE_MAX 256
/* A PAIR whose response has no question carries the query's message at payload[64]. */
#define DNS_NOQ_RESP_MAX 64

struct dns_event {
	__u64 ts_ns;        /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME, converted to wall time in user space */
	__u32 netns;        /* netns inode, stamped into skb->cb[0] by the per-netns dispatcher */
	__u32 ifindex;      /* skb->ifindex (in the netns above) */
	__u8 saddr[16];     /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u32 tcp_seq;      /* host byte order; 0 for UDP */
	__u32 orig_len;     /* L4 payload length on the wire (from the IP header) */
	__u16 sport;        /* host byte order */
	__u16 dport;
	__u16 cap_len;      /* bytes of payload[] present in this record */
	__u8 pkt_type;      /* PACKET_HOST, PACKET_OUTGOING, ... */
	__u8 ip_version;    /* 4 or 6 */
	__u8 proto;         /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 tcp_flags;     /* FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ...; 0 for UDP */
	__u8 flags;         /* DNS_EV_* */
	__u8 kind;          /* DNS_KIND_* */
	/* PAIR and SUPERSEDED only (unset on PACKET records) */
	__u32 q_retransmits; /* copies of the query seen while it was pending */
	__u64 q_ts_ns;       /* PAIR: the query's time; SUPERSEDED: the superseding query's time */
	__u64 q_rts_ns[4];   /* the first 4 retransmissions' times */
	__u8 q_daddr[16];    /* PAIR: the server as the client addressed it (the query's destination) */
	__u32 q_ifindex;     /* PAIR: the query's ifindex */
	__u16 q_dport;       /* PAIR: the query's destination port */
	__u16 q_flags;       /* PAIR: the query's DNS flags word */
	__u8 q_pkt_type;     /* PAIR: the query's pkt_type */
	__u8 _pad;
	__u16 q_msg_len;     /* PAIR without a question in the response: query message at payload[64] */
	__u8 payload[MAX_PAYLOAD];
};

#define DNS_EVENT_HDR_LEN 140 /* offsetof(struct dns_event, payload) */

/* The kernel's pending-query table (KERNEL_PAIRING): the key is pairing.py's. */
struct pending_key {
	__u32 netns;
	__u16 id;          /* DNS id */
	__u16 cport;       /* client port */
	__u8 caddr[16];    /* client address (IPv4 in the first 4 bytes) */
	__u8 role;         /* 0 client, 1 server */
	__u8 proto;        /* IPPROTO_UDP */
	__u8 _pad[2];
};

struct pending_val {
	__u64 ts_ns;       /* first sighting (boot ns) */
	__u64 rts_ns[4];   /* the first 4 retransmissions */
	__u8 server[16];   /* the query's destination */
	__u32 retransmits;
	__u32 ifindex;
	__u16 server_port;
	__u16 qlen;        /* question bytes: name + 4 */
	__u16 namelen;     /* name bytes, root label included */
	__u8 pkt_type;
	__u8 ip_version;
	__u8 msg[12 + DNS_QMAX]; /* the query's header (counts 1/0/0/0), then the question */
	__u8 noticed;      /* announced by a QUERY_NOTICE: its exchange always goes to user space */
};

/* KERNEL_AGG: answered exchanges the kernel proves ordinary (see agg_ordinary() in
 * dns.bpf.c) are counted here instead of being written to the ring buffer; user space
 * reads the per-CPU values and adds them to dns.lookup.duration. The buckets are
 * semconv.LOOKUP_DURATION_BUCKETS in ns (AGG_BUCKET_INDEX from the loader's cflags). */
#define DNS_AGG_BUCKETS 20 /* 19 bounds, then the +Inf bucket */

struct agg_key {
	__u32 netns;
	__u8 server[16];   /* the query's destination (IPv4 in the first 4 bytes) */
	__u16 server_port; /* host byte order */
	__u16 qtype;
	__u8 role;         /* 0 client, 1 server */
	__u8 ip_version;
	__u8 _pad[2];
};

struct agg_val {
	__u64 count;
	__u64 packets;     /* 2 per exchange plus its query's retransmissions */
	__u64 sum_ns;
	__u64 min_ns;
	__u64 max_ns;
	__u64 buckets[DNS_AGG_BUCKETS];
};

#endif
