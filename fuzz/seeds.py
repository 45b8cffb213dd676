#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/): valid inputs that reach deep into each
target, for libFuzzer to mutate and for the replay test (tools/tests/fuzz_corpus.rs) to run on stable Rust.

Run from the repository root: python3 fuzz/seeds.py. Addresses are those of tools/src/fuzzing.rs
(PIPELINE_CONFIG), from 198.18.0.0/15.
"""

import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))

XLB_EXT = bytes([2, 0, 0, 0, 0, 0x10])
XLB_INT = bytes([2, 0, 0, 0, 1, 0x10])
CLIENT = bytes([2, 0, 0, 0, 0, 1])
B1 = bytes([2, 0, 0, 0, 1, 2])
BCAST = b"\xff" * 6


def ip(a):
    return bytes(int(x) for x in a.split("."))


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload, ttl=64, ident=0x1234, flags_frag=0x4000):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags_frag, ttl, proto, 0, ip(src), ip(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def l4sum(src, dst, proto, seg):
    pseudo = ip(src) + ip(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return csum(pseudo + seg)


def tcp(src, dst, sport, dport, flags, seq=1000, ack=0, payload=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + payload
    c = l4sum(src, dst, 6, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(src, dst, sport, dport, payload):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = l4sum(src, dst, 17, seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp_echo(payload, ident=7, seq=1):
    m = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def arp(op, smac, sip, tip, dst=BCAST):
    a = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + smac + ip(sip) + b"\0" * 6 + ip(tip)
    return eth(dst, smac, 0x0806, a)


def fragments(src, dst, proto, payload, step, ident=0x4242):
    out = []
    for off in range(0, len(payload), step):
        chunk = payload[off:off + step]
        more = off + step < len(payload)
        ff = (off // 8) | (0x2000 if more else 0)
        out.append(ipv4(src, dst, proto, chunk, ident=ident, flags_frag=ff))
    return out


def record(frame, worker=0, port=0, advance=0):
    return bytes([(advance << 2) | (port << 1) | worker]) + struct.pack("!H", len(frame)) + frame


C, VIP, DRVIP, LIP, S1 = "198.18.0.1", "198.18.0.100", "198.18.0.101", "198.19.0.10", "198.19.0.2"


def client_frame(packet):
    return eth(XLB_EXT, CLIENT, 0x0800, packet)


def pipeline_seeds():
    seeds = {}
    syn = client_frame(ipv4(C, VIP, 6, tcp(C, VIP, 40000, 80, 0x02)))
    ack = client_frame(ipv4(C, VIP, 6, tcp(C, VIP, 40000, 80, 0x10, seq=1001, ack=1, payload=b"GET / HTTP/1.0\r\n\r\n")))
    fin = client_frame(ipv4(C, VIP, 6, tcp(C, VIP, 40000, 80, 0x11, seq=1019, ack=1)))
    seeds["tcp_flow"] = b"".join(
        [record(arp(1, CLIENT, C, VIP)), record(syn), record(syn, worker=1), record(ack), record(fin, advance=3)]
    )
    # The backend's SYN-ACK to a local port: which one xlb picks is the client's own port first (40000 is
    # outside 10000-10063, so the first of the worker's share).
    synack = eth(XLB_INT, B1, 0x0800, ipv4(S1, LIP, 6, tcp(S1, LIP, 80, 10000, 0x12, seq=5000, ack=1001)))
    seeds["tcp_reply"] = record(syn) + record(synack, port=1) + record(synack, worker=1, port=1)
    dns = client_frame(ipv4(C, VIP, 17, udp(C, VIP, 5353, 53, b"\x12\x34query")))
    seeds["udp_flow"] = record(dns) + record(dns, worker=1, advance=10) + record(dns, advance=63)
    seeds["dr_flow"] = record(client_frame(ipv4(C, DRVIP, 6, tcp(C, DRVIP, 40001, 80, 0x02)))) + record(
        client_frame(ipv4(C, DRVIP, 6, tcp(C, DRVIP, 40001, 80, 0x10, seq=1001, ack=1)))
    )
    big = bytes(range(256)) * 12
    frags = fragments(C, VIP, 17, udp(C, VIP, 5353, 53, big), 1480)
    seeds["udp_fragments"] = b"".join(record(client_frame(f)) for f in frags)
    seeds["udp_fragments_reversed"] = b"".join(record(client_frame(f)) for f in reversed(frags))
    pings = fragments(C, VIP, 1, icmp_echo(big[:2000]), 1008, ident=0x77)
    seeds["ping_fragments"] = b"".join(record(client_frame(f)) for f in pings)
    overlap = fragments(C, VIP, 17, udp(C, VIP, 5353, 53, big[:64]), 16, ident=0x99)
    seeds["fragment_overlap"] = b"".join(record(client_frame(f)) for f in [overlap[0], overlap[1], overlap[1], overlap[2]])
    seeds["ttl_one"] = record(client_frame(ipv4(C, VIP, 6, tcp(C, VIP, 40002, 80, 0x02), ttl=1))) + record(
        client_frame(ipv4(C, VIP, 17, udp(C, VIP, 5354, 53, b"x"), ttl=0))
    )
    seeds["ping_and_unserved"] = b"".join(
        [
            record(client_frame(ipv4(C, VIP, 1, icmp_echo(b"hello")))),
            record(client_frame(ipv4(C, VIP, 6, tcp(C, VIP, 40003, 81, 0x02)))),
            record(client_frame(ipv4(C, VIP, 17, udp(C, VIP, 5355, 54, b"?")))),
            record(client_frame(ipv4(C, "198.18.0.10", 1, icmp_echo(b"local")))),
        ]
    )
    # An ICMP error about a forwarded flow (fragmentation needed from a router on the client side).
    quoted = ipv4(VIP, C, 6, tcp(VIP, C, 80, 40000, 0x12, seq=5000, ack=1001))[:28]
    err = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + quoted
    err = err[:2] + struct.pack("!H", csum(err)) + err[4:]
    seeds["icmp_error"] = record(syn) + record(client_frame(ipv4("198.18.0.254", VIP, 1, err)))
    # ARP replies from a backend (answers to xlb's own requests), and a forged one on the wrong link.
    seeds["arp"] = b"".join(
        [
            record(arp(2, B1, S1, LIP, dst=XLB_INT), port=1),
            record(arp(2, CLIENT, S1, "198.18.0.10", dst=XLB_EXT)),
            record(arp(1, CLIENT, C, "198.18.0.10")),
        ]
    )
    return seeds


def http(method, path, body=b"", headers=()):
    h = ["%s %s HTTP/1.1" % (method, path), "Host: xlb", "Authorization: Bearer fuzz-token-0123456789"]
    h += list(headers)
    if body and not any(x.lower().startswith(("content-length", "transfer-encoding")) for x in headers):
        h.append("Content-Length: %d" % len(body))
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


def control_seeds():
    listener = b'{"vip": "198.18.0.102", "port": 8080, "protocol": "tcp", "scheduler": "rr", "group": "web"}'
    group = b'{"servers": [{"addr": "198.19.0.7:80", "weight": 3}], "health_check": {"kind": "tcp"}}'
    return {
        "get_status": http("GET", "/v1/status"),
        "get_conns": http("GET", "/v1/conns?listener=web&server=198.19.0.2:80&client=198.18.0.1&limit=5"),
        "put_listener": http("PUT", "/v1/listeners/api", listener),
        "put_group": http("PUT", "/v1/groups/extra", group),
        "put_server": http("PUT", "/v1/groups/web/servers/198.19.0.9:80", b'{"weight": 2}'),
        "drain_server": http("POST", "/v1/groups/web/servers/198.19.0.2:80/drain"),
        "delete_listener": http("DELETE", "/v1/listeners/dns"),
        "chunked": http("PUT", "/v1/listeners/api", b"5\r\nhello\r\n0\r\n\r\n", ["Transfer-Encoding: chunked"]),
        "huge_length": http("PUT", "/v1/listeners/api", b"{}", ["Content-Length: 18446744073709551615"]),
        "negative_length": http("PUT", "/v1/listeners/api", b"{}", ["Content-Length: -1"]),
        "two_lengths": http("PUT", "/v1/listeners/api", b"{}", ["Content-Length: 2", "Content-Length: 2"]),
        "bad_name": http("PUT", "/v1/listeners/..", listener),
        "no_token": b"GET /v1/status HTTP/1.1\r\nHost: xlb\r\n\r\n",
    }


def config_seeds():
    base = open(os.path.join(ROOT, "..", "tools", "src", "fuzzing.rs")).read()
    start = base.index('r#"') + 3
    pipeline = base[start:base.index('"#', start)]
    ha = pipeline + """
[ha]
vrid = 51
priority = 200
interface = "ext0"
local_ips = ["198.19.0.20/24"]
sync_group = "224.0.0.81:8848"
auth_key_file = "/nonexistent/sync.key"
"""
    minimal = """[node]
name = "lb1"
control_socket = "/run/xlb/lb1.sock"

[[interface]]
name = "ext0"
queues = [0]
cores = [1]
addresses = ["198.18.0.10/24"]
"""
    return {
        "pipeline": pipeline.encode(),
        "ha": ha.encode(),
        "minimal": minimal.encode(),
        "bad_table": (minimal + "[l4]\nconn_table_size = 1e10\n").encode(),
        "bad_vip": (pipeline.replace("198.18.0.101", "255.255.255.255")).encode(),
    }


def main():
    for target, seeds in [
        ("packet_pipeline", pipeline_seeds()),
        ("control_request", control_seeds()),
        ("config", config_seeds()),
    ]:
        d = os.path.join(ROOT, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, "seed-" + name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
