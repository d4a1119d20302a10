/* dns_event.h — the ABI between bpf/dns.bpf.c and exporter/capture/events.py.
 *
 * One record per DNS packet, written to the "events" ring buffer. Only the header and
 * the first cap_len payload bytes are written (the record is DNS_EVENT_HDR_LEN + cap_len
 * bytes long), so a 60-byte query costs ~130 bytes of ring space whatever MAX_PAYLOAD is.
 *
 * Change this struct and the mirror in events.py together: the loader compares sizeof()
 * and every field offset of the compiled struct against the mirror and refuses to start
 * on a mismatch.
 */
#ifndef DNSOTEL_DNS_EVENT_H
#define DNSOTEL_DNS_EVENT_H

#ifndef MAX_PAYLOAD
#define MAX_PAYLOAD 512
#endif

/* flags */
#define DNS_EV_FRAGMENT 0x01 /* first fragment of a fragmented IP datagram: payload is partial */
#define DNS_EV_TRUNCATED 0x02 /* cap_len < orig_len (MAX_PAYLOAD or the skb was shorter) */

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
	__u8 _pad;
	__u8 payload[MAX_PAYLOAD];
};

#define DNS_EVENT_HDR_LEN 68 /* offsetof(struct dns_event, payload) */

#endif
