// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
//
// xlb's XDP filter. It runs on every frame the NIC receives and decides:
//   - ARP whose target address is one of the appliance's own  -> AF_XDP socket
//   - IPv4 to one of the appliance's own addresses (VIPs, local IPs,
//     HA multicast groups)                                      -> AF_XDP socket
//   - everything else (SSH, BGP, management, other hosts)       -> kernel (XDP_PASS)
//
// The address set is the `xlb_addrs` hash map, written by userspace when the
// config changes. `xlb_xsks` maps an RX queue index to the AF_XDP socket bound
// to that queue; a queue without a socket passes its frames to the kernel.
// `xlb_stats` counts the verdicts per CPU, for `xlbctl` and tests.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
#define MAX_ADDRS 65536

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif

/* Value flags of xlb_addrs: what the address is (informational for now). */
#define XLB_ADDR_LOCAL 1
#define XLB_ADDR_VIP 2
#define XLB_ADDR_GROUP 4

enum xlb_verdict {
	XLB_TO_XSK = 0,
	XLB_PASS_NOT_OURS = 1,
	XLB_PASS_NO_SOCKET = 2,
	XLB_PASS_MALFORMED = 3,
	XLB_VERDICTS = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xlb_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ADDRS);
	__type(key, __u32); /* IPv4 address, network byte order */
	__type(value, __u32); /* XLB_ADDR_* flags */
} xlb_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_VERDICTS);
	__type(key, __u32);
	__type(value, __u64);
} xlb_stats SEC(".maps");

/* ARP payload for Ethernet/IPv4, after the 8-byte fixed header. */
struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

static __always_inline void count(__u32 verdict)
{
	__u64 *n = bpf_map_lookup_elem(&xlb_stats, &verdict);
	if (n)
		*n += 1;
}

static __always_inline int pass(__u32 verdict)
{
	count(verdict);
	return XDP_PASS;
}

static __always_inline int to_socket(struct xdp_md *ctx)
{
	__u32 queue = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xlb_xsks, &queue))
		return pass(XLB_PASS_NO_SOCKET);
	count(XLB_TO_XSK);
	return bpf_redirect_map(&xlb_xsks, queue, XDP_PASS);
}

SEC("xdp")
int xlb_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 key;

	if ((void *)(eth + 1) > end)
		return pass(XLB_PASS_MALFORMED);

	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;

	if (proto == bpf_htons(ETH_P_ARP)) {
		struct arp_eth_ipv4 *arp = l3 + 0;
		if ((void *)(arp + 1) > end)
			return pass(XLB_PASS_MALFORMED);
		key = arp->tpa;
		if (!bpf_map_lookup_elem(&xlb_addrs, &key))
			return pass(XLB_PASS_NOT_OURS);
		return to_socket(ctx);
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return pass(XLB_PASS_MALFORMED);
		key = ip->daddr;
		if (!bpf_map_lookup_elem(&xlb_addrs, &key))
			return pass(XLB_PASS_NOT_OURS);
		return to_socket(ctx);
	}

	/* IPv6 and VLAN-tagged frames stay with the kernel until xlb serves them. */
	return pass(XLB_PASS_NOT_OURS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
